"""Update compression: pure numpy codecs, index encodings and error feedback.

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
    k_for,
    nbytes,
    topk_indices,
)
from fedapp.compression.feedback import compress_with_feedback
from fedapp.compression.indices import PayloadError, decode_indices, encode_indices

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
