"""The wire format: ``proto/crdt_ops/v1/crdt.proto`` <-> :mod:`crdt_ops.ops` objects.

The generated protobuf module is imported only by :mod:`crdt_ops.wire.codec`.
"""

from crdt_ops.wire.codec import (
    decode,
    decode_snapshot,
    encode_batch,
    encode_heartbeat,
    encode_snapshot,
)

__all__ = ["decode", "decode_snapshot", "encode_batch", "encode_heartbeat", "encode_snapshot"]
