"""Everything the server carries from one round to the next, in one serializable object.

``ServerState`` holds the global model after ``server_round``, every node's cosine
reputation, every node's health and circuit-breaker state (``fedapp.server.health``), the
aggregation pipeline's state (centered clipping's center, i.e. the server momentum, and the
call count that seeds bucketing), central DP's accountant and noise generator, and the
history of round rows (``fedapp.server.rounds``: the metrics the log line, ``rounds.json``
and MLflow read). The strategy and its parts are built around one
``ServerState`` (``fedapp.server.build``) and update it in place; nothing else persists.

``to_record()`` / ``from_record()`` convert it losslessly to a Flower ``RecordDict``:
arrays as ``ArrayRecord`` (exact dtypes), counters as ints, reputation, health, accountant
and history as JSON (floats round-trip exactly), the noise generator's state as bytes. Flower's
node sampling draws from Python's global ``random``; its state is saved too
(``sampling-rng``) and put back by ``restore_sampling_rng()``, so a rebuilt server samples
the same nodes. Simulation-only parts (the threat model's attackers) are not server state.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedapp.privacy.central import CentralAccountant
from fedapp.server.health import Health
from fedapp.server.pipeline import PipelineState
from fedapp.server.screen import Reputation

FORMAT = 1
Row = dict[str, float]


@dataclass
class ServerState:
    """The server's persistent state (module docstring)."""

    server_round: int = 0
    arrays: ArrayRecord | None = None  # the global model after ``server_round``
    reputation: Reputation = field(default_factory=Reputation)
    health: Health = field(default_factory=Health)  # per node, with its breaker state
    pipeline: PipelineState = field(default_factory=PipelineState)
    dp_accountant: CentralAccountant | None = None
    noise: torch.Generator | None = None  # central DP's noise generator
    rounds: dict[int, Row] = field(default_factory=dict)  # round -> its row
    sampling_rng: Any = None  # Python ``random`` state when last saved

    def record_round(self, server_round: int, row: Row) -> Row:
        """Merge ``row`` into round ``server_round``'s row; returns the merged row."""
        merged = self.rounds.setdefault(server_round, {"round": server_round})
        merged.update(row)
        return merged

    def history(self) -> list[Row]:
        """The round rows in round order (``rounds.json``)."""
        return [self.rounds[r] for r in sorted(self.rounds)]

    def to_record(self) -> RecordDict:
        """The whole state as a ``RecordDict`` (see ``from_record``)."""
        record = RecordDict()
        if self.arrays is not None:
            record["arrays"] = self.arrays
        if self.pipeline.center is not None:
            center = self.pipeline.center.detach().cpu().numpy()
            record["momentum"] = ArrayRecord({"center": Array(np.ascontiguousarray(center))})
        noise = b"" if self.noise is None else bytes(self.noise.get_state().numpy().tobytes())
        accountant = "" if self.dp_accountant is None else json.dumps(self.dp_accountant.to_dict())
        record["state"] = ConfigRecord({
            "format": FORMAT,
            "server-round": self.server_round,
            "pipeline-calls": self.pipeline.calls,
            "reputation": json.dumps(self.reputation.to_dict()),
            "health": json.dumps(self.health.to_dict()),
            "dp-accountant": accountant,
            "noise-rng": noise,
            "rounds": json.dumps(self.history()),
            "sampling-rng": json.dumps(random.getstate()),
        })
        return record

    @classmethod
    def from_record(cls, record: RecordDict) -> ServerState:
        """Inverse of ``to_record`` (a state saved before node health starts with every node
        healthy). Raises ``ValueError`` naming what is missing or of an unknown format."""
        if "state" not in record.config_records:
            raise ValueError("not a server state: no ConfigRecord 'state'")
        meta = record.config_records["state"]
        if meta.get("format") != FORMAT:
            raise ValueError(f"server state format {meta.get('format')!r}, expected {FORMAT}")
        center = None
        if "momentum" in record.array_records:
            center = torch.from_numpy(record.array_records["momentum"]["center"].numpy().copy())
        noise = None
        if meta["noise-rng"]:
            noise = torch.Generator()
            noise.set_state(torch.frombuffer(bytearray(meta["noise-rng"]), dtype=torch.uint8))
        accountant = (CentralAccountant.from_dict(json.loads(meta["dp-accountant"]))
                      if meta["dp-accountant"] else None)
        rounds = {int(row["round"]): row for row in json.loads(str(meta["rounds"]))}
        return cls(server_round=int(meta["server-round"]),
                   arrays=record.array_records.get("arrays"),
                   reputation=Reputation.from_dict(json.loads(str(meta["reputation"]))),
                   health=Health.from_dict(json.loads(str(meta.get("health", "{}")))),
                   pipeline=PipelineState(center=center, calls=int(meta["pipeline-calls"])),
                   dp_accountant=accountant, noise=noise, rounds=rounds,
                   sampling_rng=_rng_state(json.loads(str(meta["sampling-rng"]))))

    def restore_sampling_rng(self) -> None:
        """Put Python's global ``random`` (Flower's node sampling) back where it was saved."""
        if self.sampling_rng is not None:
            random.setstate(self.sampling_rng)


def _rng_state(data: list[Any]) -> tuple[Any, ...]:
    """``random.getstate()`` from its JSON form (lists back to tuples)."""
    version, internal, gauss = data
    return (version, tuple(internal), gauss)
