"""Update compression: pure numpy codecs, index encodings and error feedback.

- :mod:`fedapp.compression.codecs`: the codecs (``CodecSpec``), ``encode`` / ``decode``
  and the wire format they share (header, payload layouts, strict validation);
- :mod:`fedapp.compression.topk`, :mod:`fedapp.compression.quantize`: the math of the two
  codec families (top-k selection; blockwise b-bit quantisation and bit packing);
- :mod:`fedapp.compression.indices`: encodings of the top-k index set;
- :mod:`fedapp.compression.feedback`: error feedback (residual carried between rounds).

No Flower imports here; the ClientApp mod and the server-side decode step wrap these.
"""

from fedapp.compression.codecs import (
    CODEC_NAMES,
    FORMAT_VERSION,
    HEADER_KEYS,
    CodecSpec,
    EncodedUpdate,
    decode,
    encode,
    nbytes,
)
from fedapp.compression.feedback import compress_with_feedback
from fedapp.compression.indices import PayloadError, decode_indices, encode_indices
from fedapp.compression.topk import k_for, topk_indices

__all__ = [
    "CODEC_NAMES",
    "FORMAT_VERSION",
    "HEADER_KEYS",
    "CodecSpec",
    "EncodedUpdate",
    "PayloadError",
    "compress_with_feedback",
    "decode",
    "decode_indices",
    "encode",
    "encode_indices",
    "k_for",
    "nbytes",
    "topk_indices",
]
