"""Per-principal Ed25519 signatures (--auth signature): a message is accepted only with a
valid signature by a keyring principal its origin belongs to, through the real broker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aio_pika
import pytest

from crdt_ops import Replica, Unauthenticated
from crdt_ops.transport.amqp import AmqpNode
from crdt_ops.transport.auth import message
from crdt_ops.transport.config import Settings
from crdt_ops.transport.signing import SIGNATURE_HEADER, BadSignature, Keyring, Signer, keygen
from tests.broker import dead_letters, delete_group, new_group, until


def test_a_signature_names_its_signer_and_covers_every_byte(tmp_path: Path) -> None:
    keygen("web", tmp_path)
    keygen("logic", tmp_path)
    ring = Keyring.from_file(tmp_path / "keyring.json")
    web = Signer.from_file(tmp_path / "web.key")
    body = b"exact bytes"
    assert ring.signer(body, web.headers(body)) == "web"
    with pytest.raises(BadSignature):
        ring.signer(body + b"!", web.headers(body))
    forged = {**web.headers(body), "x-crdt-signer": "logic"}  # web's signature, logic's name
    with pytest.raises(BadSignature):
        ring.signer(body, forged)
    with pytest.raises(Unauthenticated):
        ring.signer(body, {})
    with pytest.raises(Unauthenticated):
        ring.signer(body, Signer.generate("stranger").headers(body))
    assert (tmp_path / "web.key").stat().st_mode & 0o077 == 0


def test_signed_replicas_converge_and_refuse_what_is_unsigned_forged_or_altered(
        amqp_url: str, tmp_path: Path) -> None:
    for p in ("web", "logic"):
        keygen(p, tmp_path / "keys")
    group = new_group()

    def settings(rid: str) -> Settings:
        return Settings(amqp_url=amqp_url, group=group, replica_id=rid, heartbeat_s=0.5,
                        store=str(tmp_path / f"{rid}.sqlite"), auth="signature",
                        keyring=str(tmp_path / "keys" / "keyring.json"),
                        signing_key=str(tmp_path / "keys" / f"{rid.split('.')[0]}.key"))

    async def run() -> None:
        web, logic = AmqpNode(settings("web.1")), AmqpNode(settings("logic.1"))
        await web.start()
        await logic.start()
        try:
            async with web.write() as r:
                r.counter("n").increment()
            async with logic.write() as r:
                r.counter("n").increment(10)
            await until(lambda: web.replica.get("n") == logic.replica.get("n") == 11, 20,
                        "signed operations to converge")
            before = [web.replica.state(), logic.replica.state()]
            s = Settings(amqp_url=amqp_url, group=group)
            forger = Replica("web.forged")  # logic's key, web's name
            forger.counter("n").increment(100)
            unsigned = Replica("logic.unsigned")
            unsigned.counter("n").increment(1000)
            altered = Replica("logic.altered")
            altered.counter("n").increment(7)
            logic_key = Signer.from_file(tmp_path / "keys" / "logic.key")
            body = altered.outgoing()[0]
            conn = await aio_pika.connect(amqp_url)
            async with conn:
                ex = await (await conn.channel()).get_exchange(f"crdt.{group}")
                await ex.publish(message(s, forger.outgoing()[0], logic_key), routing_key="")
                await ex.publish(message(s, unsigned.outgoing()[0]), routing_key="")
                bad = message(s, body, logic_key)
                bad.headers[SIGNATURE_HEADER] = bytes(64).hex()
                await ex.publish(bad, routing_key="")
            await until(lambda: web.dead_lettered == logic.dead_lettered == 3, 20,
                        "both replicas to refuse the three messages")
            assert [web.replica.state(), logic.replica.state()] == before
        finally:
            await web.stop()
            await logic.stop()

    try:
        asyncio.run(run())
        reasons = sorted(h.get("x-crdt-reason") for h in dead_letters(amqp_url, group))
        assert reasons == ["bad-signature"] * 2 + ["unauthenticated"] * 4
    finally:
        delete_group(amqp_url, group, ["web.1", "logic.1"])
