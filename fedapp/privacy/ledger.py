"""A hospital's lifetime DP-SGD ledger: every round's privacy cost, on the node's own disk.

``context.state`` (:mod:`fedapp.privacy.budget`) lives for one Flower run, and ``dp-epsilon``
is the operator's per-run plan: a hospital in 20 runs would spend 20 x epsilon on the same
patients. The ledger is the hospital's record across rounds, runs and restarts. Under
``dp='local'`` each node charges every round it trains to the ledger file named by its node
config ``privacy-ledger`` (default :func:`default_path`), under the *identity of its data*
(:func:`file_identity` in a deployment, :func:`partition_identity` in simulation, so that
simulated nodes sharing one file are kept apart). The lifetime epsilon of an identity is
the RDP composition (:func:`~fedapp.privacy.accounting.epsilon_of`, Opacus's accountant) of
all its entries at the node's ``dp-delta`` (default ``1e-5``, never the run's); a node with
``dp-budget`` set refuses a round that would take it past that cap. Neither value comes from
the run config, so an operator cannot raise them.

Charged before training: :meth:`PrivacyLedger.charge` writes the round as ``pending``
before DP-SGD starts, and :meth:`PrivacyLedger.settle` marks it ``done`` after. A node that
crashes mid-round (or whose reply is lost) stays charged: the ledger can over-count a round
that released nothing, never under-count one that released an update.

File format (JSON, one object): ``format``, ``version``, ``accountant`` (``"rdp"``),
``datasets`` (identity -> ``{"describe", "delta", "cap", "entries"}``; an entry is
``{"id", "run", "round", "noise-multiplier", "sample-rate", "steps", "status", "time"}``) and
``sha256``, the digest of the rest. A settled round is merged into the entry before it when
both are done and share run, noise multiplier and sample rate (:func:`compact`: ``steps``
add up, ``rounds`` counts them, ``last-round`` and ``last-time`` name the newest), so a
run's hundreds of rounds take one entry and a round's cost does not grow with the
hospital's history. Writes are atomic (temp file, fsync, rename, fsync of the
directory) under an exclusive ``fcntl.flock`` on ``<ledger>.lock``, so concurrent writers
(simulated nodes in one process, SuperNodes on one machine) lose no entry. A file that does
not parse, has another format or a wrong digest raises :class:`LedgerError` (the node
refuses to train): it is never reset to zero spending. Cheap to import (no Opacus).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedapp.config import SYNTHETIC, NodeConfig, RunConfig
from fedapp.privacy.accounting import ACCOUNTANT, History, check_history, epsilon_of
from fedapp.privacy.budget import BudgetExhausted

FORMAT = "fedapp-privacy-ledger"
VERSION = 1
#: The node's delta when its node config sets no ``dp-delta`` (not the run's).
DEFAULT_DELTA = 1e-5
PENDING, DONE = "pending", "done"


class LedgerError(BudgetExhausted):
    """The ledger cannot be read or written: the node cannot know its spending, so it refuses
    (a ``BUDGET_REFUSED`` reply) rather than train on a reset budget."""


def default_path() -> Path:
    """``$XDG_DATA_HOME/fedapp/privacy-ledger.json``, else ``~/.local/share/fedapp/...``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "fedapp" / "privacy-ledger.json"


def file_identity(path: str | os.PathLike[str]) -> tuple[str, dict[str, Any]]:
    """A hospital file's identity: the SHA-256 of its bytes (it moves with the file and
    changes when its content does), and a description naming the file."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise LedgerError(f"privacy ledger: cannot read {os.path.basename(path)} to identify "
                          f"the data ({exc.strerror}); not training") from exc
    return f"file:sha256:{digest.hexdigest()}", {"kind": "file",
                                                 "name": os.path.basename(path)}


def partition_identity(dataset: str, partitioner: str, settings: Mapping[str, Any],
                       partition_id: int, num_partitions: int, seed: int
                       ) -> tuple[str, dict[str, Any]]:
    """A simulated node's identity: what selects its rows (dataset, partitioner and its
    settings, partition id, number of partitions, seed)."""
    described = {"kind": "partition", "dataset": dataset, "partitioner": partitioner,
                 **dict(sorted(settings.items())), "partition-id": partition_id,
                 "num-partitions": num_partitions, "seed": seed}
    key = "sim:" + ",".join(f"{k}={v}" for k, v in described.items() if k != "kind")
    return key, described


def _digest(doc: Mapping[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"))
                          .encode()).hexdigest()


def entry_history(entries: list[dict[str, Any]]) -> History:
    """The accountant history ``[(z, q, steps), ...]`` of ledger entries."""
    return check_history((e["noise-multiplier"], e["sample-rate"], e["steps"])
                         for e in entries)


def compact(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``entries`` with each done entry merged into the done entry just before it of the
    same run, noise multiplier and sample rate. Exact for the ledger's accountant: the RDP
    of the subsampled Gaussian mechanism composes additively over steps (Mironov 2017,
    "Renyi Differential Privacy", Prop. 1; Mironov, Talwar, Zhang 2019 for the sampled
    case), so ``(z, q, a) + (z, q, b)`` spends what ``(z, q, a + b)`` spends. Pending
    entries are never merged (a crashed round stays visible)."""
    out: list[dict[str, Any]] = []
    for entry in entries:
        last = out[-1] if out else None
        if (last is not None and last["status"] == DONE == entry["status"]
                and all(last[k] == entry[k] for k in ("run", "noise-multiplier", "sample-rate"))):
            out[-1] = {**last, "steps": int(last["steps"]) + int(entry["steps"]),
                       "rounds": int(last.get("rounds", 1)) + int(entry.get("rounds", 1)),
                       "last-round": entry.get("last-round", entry["round"]),
                       "last-time": entry.get("last-time", entry["time"])}
        else:
            out.append(entry)
    return out


class PrivacyLedger:
    """The ledger file at ``path`` (``<path>.lock`` beside it serialises writers)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    @contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fh = open(self.lock_path, "a+")  # noqa: SIM115 (closed below, after unlocking)
        except OSError as exc:
            raise LedgerError(f"privacy ledger {self.path}: cannot lock it "
                              f"({exc.strerror}); not training") from exc
        try:
            fcntl.flock(fh, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            fh.close()  # closing releases the lock

    def read(self) -> dict[str, Any]:
        """The whole ledger (an empty one if the file does not exist yet)."""
        if not self.path.parent.is_dir():  # nothing to read; create nothing
            return self._read()
        with self._locked(exclusive=False):
            return self._read()

    def _read(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {"format": FORMAT, "version": VERSION, "accountant": ACCOUNTANT,
                    "datasets": {}}
        except OSError as exc:
            raise LedgerError(f"privacy ledger {self.path}: unreadable ({exc.strerror}); "
                              "not training") from exc
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or (doc.get("format"), doc.get("version"),
                                             doc.get("accountant")) != (FORMAT, VERSION,
                                                                        ACCOUNTANT):
                raise ValueError("not a fedapp privacy ledger of this version")
            if doc.get("sha256") != _digest(doc):
                raise ValueError("its sha256 does not match its content")
            for record in doc["datasets"].values():
                entry_history(record["entries"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LedgerError(
                f"privacy ledger {self.path} is corrupt ({exc}); refusing to train rather "
                "than reset its spending: restore it from a backup") from exc
        return doc

    def _write(self, doc: dict[str, Any]) -> None:
        for record in doc["datasets"].values():
            record["entries"] = compact(record["entries"])
        doc["sha256"] = _digest(doc)
        try:
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump(doc, fh, indent=1, sort_keys=True)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise LedgerError(f"privacy ledger {self.path}: cannot write it "
                              f"({exc.strerror}); not training") from exc

    def charge(self, budget: NodeBudget, noise_multiplier: float, sample_rate: float,
               steps: int, requested: float) -> str:
        """Record one round as ``pending`` before it trains; return the entry's id.

        Raises :class:`BudgetExhausted` (nothing written) if the identity's composed
        epsilon, this round included, would exceed ``budget.cap``; the reason names the
        cap, the spent epsilon and ``requested`` (the run's ``dp-epsilon``).
        """
        entry = {"id": uuid.uuid4().hex, "run": budget.run, "round": budget.round,
                 "noise-multiplier": float(noise_multiplier),
                 "sample-rate": float(sample_rate), "steps": int(steps), "status": PENDING,
                 "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with self._locked(exclusive=True):
            doc = self._read()
            record = doc["datasets"].setdefault(
                budget.dataset, {"describe": dict(budget.describe), "entries": []})
            if budget.cap is not None:  # (no cap: recorded only, no accounting needed)
                self._check_cap(budget, record["entries"], entry, requested)
            record.update(delta=budget.delta, cap=budget.cap)
            record["entries"].append(entry)
            self._write(doc)
        return str(entry["id"])

    @staticmethod
    def _check_cap(budget: NodeBudget, entries: list[dict[str, Any]], entry: dict[str, Any],
                   requested: float) -> None:
        assert budget.cap is not None
        spent = epsilon_of(entry_history(entries), budget.delta)
        after = epsilon_of(entry_history([*entries, entry]), budget.delta)
        if after > budget.cap:
            raise BudgetExhausted(
                f"DP lifetime budget: dp-budget={budget.cap:g} (delta={budget.delta:g}) "
                f"of this node's data, spent {spent:.3f}, this round would bring it to "
                f"{after:.3f} (run asks dp-epsilon={requested:g}); not training")

    def settle(self, dataset: str, entry_id: str, steps: int) -> None:
        """Mark a charged round ``done`` once it trained (``steps`` it took; never fewer
        than charged, so a settle can only add)."""
        with self._locked(exclusive=True):
            doc = self._read()
            for entry in doc["datasets"].get(dataset, {}).get("entries", []):
                if entry["id"] == entry_id:
                    entry["status"] = DONE
                    entry["steps"] = max(int(entry["steps"]), int(steps))
                    self._write(doc)
                    return
        raise LedgerError(f"privacy ledger {self.path}: entry {entry_id} is gone")


@dataclass(frozen=True)
class NodeBudget:
    """What a node charges this round to: its ledger, data identity, cap and delta."""

    ledger: PrivacyLedger
    dataset: str
    describe: Mapping[str, Any]
    cap: float | None
    delta: float
    run: int
    round: int

    def spent(self) -> float:
        """The identity's lifetime epsilon at ``delta`` (pending rounds included)."""
        record = self.ledger.read()["datasets"].get(self.dataset)
        return epsilon_of(entry_history(record["entries"]), self.delta) if record else 0.0


def node_budget(cfg: RunConfig, node: NodeConfig, run: int, server_round: int) -> NodeBudget:
    """The budget a node charges under ``dp='local'``: its ``privacy-ledger`` (else
    :func:`default_path`), its data's identity, its ``dp-budget`` and ``dp-delta``."""
    if node.data_path:
        dataset, describe = file_identity(node.data_path)
    else:
        assert node.partition_id is not None and node.num_partitions is not None
        settings: dict[str, Any] = {"test-fraction": cfg.test_fraction}
        if cfg.partitioner == "dirichlet":
            settings["dirichlet-alpha"] = cfg.dirichlet_alpha
        elif cfg.partitioner == "shard":
            settings["shards-per-node"] = cfg.shards_per_node
        if cfg.dataset == SYNTHETIC:  # these keys select a generated node's rows too
            settings.update({k: v for k, v in cfg.to_flower().items()
                             if k.startswith("synthetic-") and k != "synthetic-test-rows"})
        dataset, describe = partition_identity(cfg.dataset, cfg.partitioner, settings,
                                               node.partition_id, node.num_partitions,
                                               cfg.seed)
    path = node.privacy_ledger or default_path()
    return NodeBudget(PrivacyLedger(path), dataset, describe, node.dp_budget, node.dp_delta,
                      int(run), int(server_round))
