"""Who published a message, and how our own messages say it: the one path by which a
delivery is authenticated (``--auth``).

A replica checks every delivered message's origin against the principal that published
it (:mod:`crdt_ops.policy`: a replica id belongs to a principal). :func:`authenticator`
picks how that principal is known, once, from the settings:

- ``none``: it is not (any origin is accepted);
- ``user-id``: the broker user that published the message. RabbitMQ refuses a message
  whose ``user_id`` property is not the publishing connection's user ("Validated User-ID",
  https://www.rabbitmq.com/docs/validated-user-id), so the property can be trusted; users
  listed in ``--trusted-users`` may publish for any origin;
- ``signature``: the Ed25519 signer of the message, verified against the keyring
  (:mod:`crdt_ops.transport.signing`).

:func:`message` builds every message a replica publishes, with its ``user_id`` and, when
the replica has a signing key, its signature; :func:`properties` gives the same
properties for the publisher's own path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import aio_pika
from aiormq import spec

from crdt_ops.errors import Unauthenticated
from crdt_ops.transport.config import Settings
from crdt_ops.transport.signing import Keyring, Signer


class Authenticator(Protocol):
    """Finds the principal a delivered message's origin must belong to."""

    def sender(self, body: bytes, headers: Mapping[str, Any] | None,
               user_id: str | None) -> str | None:
        """That principal; None: any origin. Raises
        :class:`~crdt_ops.errors.Unauthenticated` (or
        :class:`~crdt_ops.transport.signing.BadSignature`) when the message does not say
        who sent it in the way this mode requires."""
        ...


class AnyOrigin:
    """``--auth none``: every origin is accepted."""

    def sender(self, body: bytes, headers: Mapping[str, Any] | None,
               user_id: str | None) -> str | None:
        return None


class ByUserId:
    """``--auth user-id``: the broker user that published the message (``trusted``:
    users whose messages may name any origin)."""

    def __init__(self, trusted: frozenset[str]) -> None:
        self.trusted = trusted

    def sender(self, body: bytes, headers: Mapping[str, Any] | None,
               user_id: str | None) -> str | None:
        if user_id and user_id in self.trusted:
            return None
        if not user_id:
            raise Unauthenticated("the message carries no user_id (--auth user-id)")
        return user_id


class BySignature:
    """``--auth signature``: the principal whose key signed the message."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    def sender(self, body: bytes, headers: Mapping[str, Any] | None,
               user_id: str | None) -> str | None:
        return self.keyring.signer(body, headers)


def authenticator(settings: Settings) -> Authenticator:
    """How a replica with ``settings`` authenticates deliveries (reads the keyring file
    for ``--auth signature``)."""
    if settings.auth == "signature":
        return BySignature(Keyring.from_file(settings.keyring))
    if settings.auth == "user-id":
        return ByUserId(frozenset(u for u in settings.trusted_users.split(",") if u))
    return AnyOrigin()


#: The ``app_id`` and ``type`` properties of every message a replica publishes.
APP_ID, TYPE = "crdt-ops", "crdt_ops.v1.Envelope"


def message(settings: Settings, body: bytes, signer: Signer | None = None,
            **properties: Any) -> aio_pika.Message:
    """A persistent crdt-ops message whose ``user_id`` is the connection's user:
    RabbitMQ refuses it from anyone else, so receivers can trust it (``--auth``); with
    a ``signer``, also signed (:mod:`crdt_ops.transport.signing`)."""
    return aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            app_id=APP_ID, type=TYPE, user_id=settings.user,
                            headers=signer.headers(body) if signer else None, **properties)


def properties(settings: Settings, body: bytes, signer: Signer | None,
               message_id: str) -> spec.Basic.Properties:
    """The AMQP properties :func:`message` gives ``body`` with ``message_id``, built for
    aiormq's ``basic_publish`` directly: the path every operation takes
    (:mod:`~crdt_ops.transport.amqp.publisher`), where building an aio-pika message first
    costs about 8 µs a message on a quiet core, and several times that under load
    (BENCHMARKS.md, "The publishing path")."""
    return spec.Basic.Properties(delivery_mode=aio_pika.DeliveryMode.PERSISTENT.value,
                                 app_id=APP_ID, message_type=TYPE, user_id=settings.user,
                                 headers=signer.headers(body) if signer else None,
                                 message_id=message_id)


def may_relay(settings: Settings) -> bool:
    """Whether a replica with ``settings`` may publish other replicas' messages again
    (:mod:`crdt_ops.transport.relay`): its peers accept a message that names another
    origin from it only with ``--auth none`` (and no signing key of its own, whose
    signature would name it), or with ``--auth user-id`` when its broker user is one of
    ``--trusted-users``. With ``--auth signature`` it may not: its log keeps the
    messages, not their senders' signatures."""
    if settings.auth == "none":
        return not settings.signing_key
    return settings.auth == "user-id" and settings.user in {
        u for u in settings.trusted_users.split(",") if u}


def signer_of(settings: Settings) -> Signer | None:
    """The signer of ``settings.signing_key``, if one is set."""
    return Signer.from_file(settings.signing_key) if settings.signing_key else None
