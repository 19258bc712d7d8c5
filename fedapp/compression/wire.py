"""The compressed train reply as Flower carries it, and how many array bytes a reply costs.

Wire format of a compressed train reply (written by :mod:`fedapp.compression.mod`, read by
:mod:`fedapp.compression.server`); a dense reply is the train handler's own content:

* ONE ArrayRecord, under the key the train handler used (``"arrays"``), holding ONE Array
  ``PAYLOAD_KEY`` (``"payload"``): the codec payload as a 1-D ``uint8`` ``.npy`` array (see
  :mod:`fedapp.compression.codecs` for the byte layout of each codec);
* ONE ConfigRecord ``RECORD_KEY`` (``"compression"``): ``FORMAT_KEY`` (``"format"``) =
  ``FORMAT_TAG`` plus the codec header scalars ``codec`` (str), ``version``, ``d``, ``k``,
  ``bits``, ``block`` (ints; :data:`fedapp.compression.HEADER_KEYS`);
* ONE MetricRecord: the handler's metrics (``num-examples``, ...) plus
  ``compress-encode-seconds`` and ``compress-ratio``.

The decoded payload is the node's *update* ``w_local - w_global`` (after error feedback),
flattened in the key order of the global model's ArrayRecord, float32, length ``d``.
"""

from __future__ import annotations

from flwr.app import RecordDict

__all__ = [
    "FORMAT_KEY",
    "FORMAT_TAG",
    "METRIC_RATIO",
    "METRIC_SECONDS",
    "PAYLOAD_KEY",
    "RECORD_KEY",
    "serialized_bytes",
]

RECORD_KEY = "compression"
FORMAT_KEY = "format"
FORMAT_TAG = "fedapp-compression"
PAYLOAD_KEY = "payload"
METRIC_SECONDS = "compress-encode-seconds"
METRIC_RATIO = "compress-ratio"


def serialized_bytes(content: RecordDict) -> int:
    """Bytes of the arrays of ``content`` as Flower carries them.

    ``sum(record.count_bytes() for record in content.array_records.values())``: for every
    Array its serialized ``.npy`` bytes (data plus the ~128-byte ``.npy`` header that each
    Array carries) plus the length of its key. Config and metric records, and Flower's
    per-message framing (about 250 bytes for a message with one Array, ~175 more per further
    Array), are not counted; for model-sized messages the arrays dominate. Use it on a train
    reply for the uplink and on a train instruction for the downlink of one node.
    """
    return sum(record.count_bytes() for record in content.array_records.values())
