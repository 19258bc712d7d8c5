"""Error replies a node sends on purpose, and how the server names every failure's kind.

A node that cannot or must not train (its data file is unusable, its DP budget is spent)
replies with an ``Error`` carrying one of the codes below and a one-line reason that names
files, columns and row numbers but never a value from a row. Anything else that fails on a
node reaches the server as one of Flower's codes (``flwr.common.constant.ErrorCode``).
Cheap to import: the ClientApp imports it.
"""

from __future__ import annotations

from flwr.app import Error, Message
from flwr.common.constant import ErrorCode

DATA_ERROR = 3050  # the node's data file cannot be used
BUDGET_REFUSED = 3051  # another round would exceed the node's DP budget
SECAGG_ERROR = 3052  # a secure-aggregation stage failed (fedapp.secagg), or a stage's reply
#                      never came (the server counts that node under the same kind)

#: Error code -> the kind counted in the round's metrics (``failed-<kind>``).
KINDS: dict[int, str] = {
    DATA_ERROR: "data",
    BUDGET_REFUSED: "dp-refused",
    SECAGG_ERROR: "secagg",
    ErrorCode.NODE_UNAVAILABLE: "unreachable",
    ErrorCode.REPLY_MESSAGE_UNAVAILABLE: "unreachable",
    ErrorCode.MESSAGE_UNAVAILABLE: "unreachable",
    ErrorCode.CLIENT_APP_RAISED_EXCEPTION: "crash",
    ErrorCode.CLIENT_APP_CRASHED: "crash",
    ErrorCode.LOAD_CLIENT_APP_EXCEPTION: "crash",
}


def error_reply(msg: Message, code: int, reason: str) -> Message:
    """The error reply to ``msg``: ``code`` and the first line of ``reason``."""
    first = reason.strip().splitlines()[0] if reason.strip() else "no reason given"
    return Message(Error(code=code, reason=first), reply_to=msg)


def kind_of(code: int) -> str:
    """The kind of a failure with error ``code`` (``"other"`` when unknown)."""
    return KINDS.get(int(code), "other")
