"""One bucket's protocol state within a round, and the check of a node's masked vector."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from flwr.app import RecordDict

from fedapp.secagg import masking
from fedapp.secagg.client import MASKED_KEY
from fedapp.secagg.unmask import Encoding
from fedapp.validation import ReplyRejected


@dataclass
class Bucket:
    """One bucket's protocol state within a round."""

    members: tuple[int, ...]
    t: int
    enc: Encoding
    keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # setup answers
    graph: dict[int, tuple[int, ...]] = field(default_factory=dict)  # of the nodes in it
    shared: set[int] = field(default_factory=set)  # answered share_keys
    inbox: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)  # dst -> shares
    masked: dict[int, np.ndarray] = field(default_factory=dict)  # accepted, until unmasked
    contributors: tuple[int, ...] = ()
    total: np.ndarray | None = None  # the decoded sum of the contributors' updates
    dropped_reason: str = ""


def masked_vector(content: RecordDict, size: int, bits: int) -> np.ndarray:
    """The one flat array of ``Z_M`` a node sends in stage 3; ``ReplyRejected`` (kind
    ``masked``) names what is wrong with it."""
    if MASKED_KEY not in content.array_records:
        raise ReplyRejected(f"no {MASKED_KEY!r} record (is the node's secagg_mod installed?)",
                            "masked")
    record = content.array_records[MASKED_KEY]
    if list(record) != ["masked"]:
        raise ReplyRejected(f"{MASKED_KEY!r} holds {sorted(record)}, expected ['masked']",
                            "masked")
    array = record["masked"].numpy()
    dtype = masking.wire_dtype(bits)
    if array.dtype != dtype or array.shape != (size,):
        raise ReplyRejected(f"masked vector of {array.dtype} {array.shape}, expected {dtype} "
                            f"({size},)", "masked")
    return array
