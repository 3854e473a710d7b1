"""``amqps://`` end to end: replica processes on a throwaway RabbitMQ node with a TLS
listener (tools.rabbitnode), with certificates made here by the openssl CLI.

The node requires a client certificate (``verify_peer`` + ``fail_if_no_peer_cert``), so
the URLs carry ``cafile=`` (verify the server), ``certfile=`` and ``keyfile=`` (who we are).
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import aio_pika
import aiormq
import pytest

from tests.broker import converged, explain, wait_until
from tests.conftest import Group
from tools.rabbitnode import RabbitNode, free_port


@dataclass(frozen=True)
class Certs:
    ca: Path  # the CA that signed the server's and the client's certificates
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def make_ca(d: Path, name: str) -> tuple[Path, Path]:
    cert, key = d / f"{name}.pem", d / f"{name}.key"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def make_leaf(d: Path, name: str, ca: tuple[Path, Path], ext: str) -> tuple[Path, Path]:
    """A certificate for ``name`` signed by ``ca``, with the extensions ``ext``."""
    cert, key, csr, extfile = (d / f"{name}.pem", d / f"{name}.key", d / f"{name}.csr",
                               d / f"{name}.ext")
    extfile.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                       "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n" + ext)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
    openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
            "-out", cert, "-days", "2", "-extfile", extfile)
    return cert, key


def make_certs(d: Path) -> Certs:
    """A throwaway CA, a server certificate for localhost / 127.0.0.1, a client
    certificate, and another CA; readable by the broker's user (a test, not secrets)."""
    d.mkdir(parents=True, exist_ok=True)
    ca = make_ca(d, "test-ca")
    server = make_leaf(d, "localhost", ca, "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                                           "extendedKeyUsage=serverAuth\n")
    client = make_leaf(d, "crdt-ops-client", ca, "extendedKeyUsage=clientAuth\n")
    other_ca = make_ca(d, "other-ca")[0]
    d.chmod(0o755)
    for f in d.iterdir():
        f.chmod(0o644)
    return Certs(ca[0], *server, *client, other_ca)


@dataclass(frozen=True)
class TlsBroker:
    node: RabbitNode
    tls_port: int
    certs: Certs

    def url(self, host: str = "localhost", **options: str | Path) -> str:
        query = urlencode({k: str(v) for k, v in options.items()})
        return f"amqps://guest:guest@{host}:{self.tls_port}/?{query}"

    @property
    def good_url(self) -> str:
        """Verifies the server against the test CA and presents the client certificate."""
        c = self.certs
        return self.url(cafile=c.ca, certfile=c.client_cert, keyfile=c.client_key)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    work = tmp_path_factory.mktemp("tls")
    certs = make_certs(work / "certs")
    port = free_port()
    node = RabbitNode("crdt-tls", work, config=(
        f"listeners.ssl.default = 127.0.0.1:{port}\n"
        f"ssl_options.cacertfile = {certs.ca}\n"
        f"ssl_options.certfile = {certs.server_cert}\n"
        f"ssl_options.keyfile = {certs.server_key}\n"
        "ssl_options.verify = verify_peer\n"
        "ssl_options.fail_if_no_peer_cert = true\n"))
    with node:
        yield TlsBroker(node, port, certs)


def connect_error(url: str) -> BaseException:
    """The error that connecting to ``url`` raises (the test fails if it connects)."""
    async def attempt() -> BaseException:
        try:
            conn = await aio_pika.connect(url, timeout=10)
        except Exception as e:
            return e
        await conn.close()
        raise AssertionError(f"connected to {url}")
    return asyncio.run(attempt())


def test_replicas_converge_over_tls(tls: TlsBroker, tmp_path: Path) -> None:
    group = Group(tls.good_url, tmp_path)
    procs = [group.replica(f"r{i}", ops=600, seed=i).start() for i in range(2)]
    try:
        wait_until(lambda: converged(procs, {"r0": 600, "r1": 600}), 90,
                   "2 replicas to converge over TLS", explain(procs))
        # both connections really are TLS, with the client certificate
        lines = tls.node.ctl("list_connections", "client_properties", "ssl",
                             "peer_cert_subject", "-q").splitlines()
        ours = [line for line in lines if "crdt-ops r" in line]
        assert len(ours) == 2, lines
        assert all("\ttrue\t" in line and "CN=crdt-ops-client" in line for line in ours), ours
    finally:
        for p in procs:
            p.stop()


def test_a_server_certificate_from_another_ca_fails_verification(tls: TlsBroker,
                                                                 tmp_path: Path) -> None:
    c = tls.certs
    bad = tls.url(cafile=c.other_ca, certfile=c.client_cert, keyfile=c.client_key)
    err = connect_error(bad)
    assert "CERTIFICATE_VERIFY_FAILED" in str(err), repr(err)
    # a replica process says so in its log, retries, and never shows the password
    proc = Group(bad, tmp_path).replica("r0", ops=10).start()
    try:
        wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in proc.tail(), 30,
                   "the replica to log the verification failure", proc.tail)
        log = proc.log.read_text()
        assert "does not verify against the URL's cafile=" in log, log
        assert "amqps://guest:***@localhost" in log, log
        assert "guest:guest" not in log, log
        assert not proc.report(), "a replica that cannot verify the broker must not be up"
    finally:
        proc.kill()  # SIGTERM waits for the connection (runner.py), which never comes


def test_plain_amqp_to_the_tls_port_fails(tls: TlsBroker) -> None:
    err = connect_error(f"amqp://guest:guest@127.0.0.1:{tls.tls_port}/")
    # the TLS listener reads the AMQP header as a bad TLS hello and drops the connection
    assert isinstance(err, aiormq.exceptions.AMQPConnectionError), repr(err)
    assert "reset" in str(err).lower() or "EOF" in str(err), repr(err)


def test_without_a_client_certificate_the_broker_refuses(tls: TlsBroker) -> None:
    err = connect_error(tls.url(cafile=tls.certs.ca))
    assert isinstance(err, aiormq.exceptions.AMQPConnectionError), repr(err)
    # TLS 1.3: the client sees the broker's alert, or only the reset that follows it
    assert "CERTIFICATE_REQUIRED" in str(err) or "reset" in str(err).lower(), repr(err)

    async def with_the_certificate() -> None:
        conn = await aio_pika.connect(tls.good_url, timeout=10)
        await conn.close()

    asyncio.run(with_the_certificate())  # the same URL plus the client certificate works


def test_logged_urls_hide_passwords_and_keep_tls_options() -> None:
    from crdt_ops.transport.amqp import redact_urls

    one = "amqps://svc:s3cret@h1:5671/?cafile=/etc/ca.pem&certfile=/etc/c.pem&keyfile=/etc/c.key"
    two = one.replace("h1", "h2")
    assert redact_urls(one) == one.replace("s3cret", "***")
    assert redact_urls(f"{one},{two}") == f"{one},{two}".replace("s3cret", "***")
    assert redact_urls("amqps://h1/?cafile=/etc/ca.pem") == "amqps://h1/?cafile=/etc/ca.pem"
