"""The RabbitMQ transport: :class:`AmqpNode` pumps a durable replica through a group's
exchange, queues and stream.

``node``: the pump (publish the outbox, apply and log deliveries, heartbeats, watching
the echo and the gaps); ``connection``: failover over a cluster's nodes;
``recovery``: reading the stream to join and to fill gaps; ``founding``: founding a
group and retiring a replica; ``publisher`` and ``inbound``: the two directions;
``stream_consumer``: reading the group's stream, each message a ``delivery``. Beside it in
:mod:`crdt_ops.transport`: ``durable`` (the replica and its store), ``topology`` (the
group's objects on the broker), ``auth`` (who sent a delivery).
"""

from crdt_ops.transport.amqp.connection import FailoverConnection, connect_first, redact_urls
from crdt_ops.transport.amqp.founding import publish_retirement
from crdt_ops.transport.amqp.node import AmqpNode
from crdt_ops.transport.durable import default_store_path, export_snapshot

__all__ = ["AmqpNode", "FailoverConnection", "connect_first", "default_store_path",
           "export_snapshot", "publish_retirement", "redact_urls"]
