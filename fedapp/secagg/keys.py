"""The server's directory of the nodes' public keys, kept across rounds.

SecAgg+ as Flower runs it (Bell et al. 2020, after Bonawitz et al. 2017) starts every
round with a ``setup`` stage: each node draws two key pairs and the server relays the
public keys. What a later round can reuse safely, and what it cannot:

* **Key pairs: reused** for up to ``secagg-key-rounds`` rounds. Pairwise masks come from
  the ECDH secret of two nodes' first key pairs, expanded with the round in HKDF's info
  (``masking.round_context``), so a pair of nodes never adds the same mask twice; a node
  with kept keys refuses a round that is not after its last one. The second key pair only
  encrypts shares (Fernet: fresh IV, authenticated; the plaintext names sender and
  receiver). A replayed share of an earlier round holds that round's secrets, which the
  server reconstructed then; it makes this round's reconstruction fail, and the bucket is
  left out with the reason.
* **Private mask seeds and all Shamir shares: fresh every round.** The server reconstructs
  every contributor's mask seed at unmask, so a seed (or any seed derived from a kept
  secret) can never serve twice; the round's share holders change with the buckets.
* **Re-keying**: a node whose first private key may have been reconstructed (it shared
  keys, then sent no usable vector) or whose protocol state did not reach the end of the
  round (a failed stage, a bucket left out) gets a setup stage in its next round, as does
  every node whose keys are ``secagg-key-rounds`` old.

What reuse costs in exposure: a node's first private key is Shamir-shared with its
bucket-mates of every round it serves; ``t`` colluding holders in any one of those rounds
(with the server) learn it, and with it the node's updates of every round of the key's
lifetime (the server learns mask seeds at unmask anyway). ``secagg-key-rounds=1`` is the
original protocol: fresh keys every round.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class KeyDirectory:
    """Each node's public keys (mask key, encryption key) and the round of its setup."""

    lifetime: int  # rounds one key pair serves (secagg-key-rounds); 1: fresh every round
    keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    since: dict[int, int] = field(default_factory=dict)

    def needs_setup(self, nodes: Iterable[int], server_round: int) -> list[int]:
        """The nodes among ``nodes`` without usable kept keys in ``server_round``."""
        return [n for n in nodes
                if n not in self.keys or server_round - self.since[n] >= self.lifetime]

    def register(self, node: int, keys: tuple[bytes, bytes], server_round: int) -> None:
        """``node`` answered setup in ``server_round`` with these public keys."""
        self.keys[node] = keys
        self.since[node] = server_round

    def forget(self, node: int) -> None:
        """``node`` must run setup before it takes part again."""
        self.keys.pop(node, None)
        self.since.pop(node, None)

    def settle(self, took_part: Iterable[int], completed: Iterable[int]) -> None:
        """After a round: forget every node that took part but did not answer the unmask
        stage (module docstring, re-keying)."""
        done = set(completed)
        for node in took_part:
            if node not in done:
                self.forget(node)
