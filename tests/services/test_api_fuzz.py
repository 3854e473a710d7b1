"""The web API under random requests (hypothesis), in process on an in-memory node.

Every answer is a 2xx or 4xx with a JSON body (never a 5xx, never a text error
page), and a request answered with a 4xx changed nothing in the replica (state
and clock). Requests: random methods, known routes with random ids (unicode,
slashes, huge), random paths, random JSON bodies (wrong types, huge or
unencodable strings, deep nesting) and random bytes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from crdt_ops import Replica
from crdt_ops.transport.memory import MemoryBus, MemoryNode
from services.web import make_app
from tests.support import one_group

HYPOTHESIS = settings(max_examples=600, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow,
                                             HealthCheck.function_scoped_fixture])


class Api:
    """One in-memory web replica and an HTTP client to it, on one event loop."""

    def __init__(self, members: list[str] | None = None) -> None:
        """``members``: the founders of a group with an agreed membership (None: open)."""
        self.loop = asyncio.new_event_loop()
        self.node = MemoryNode(MemoryBus(), "web")
        if members is not None:
            self.node.replica = Replica("web", members=members)
        self.loop.run_until_complete(self.node.start())
        self.client = TestClient(TestServer(make_app(one_group(self.node))), loop=self.loop)
        self.loop.run_until_complete(self.client.start_server())
        status, body = self.call("POST", "/api/containers", json.dumps({"name": "known"}).encode())
        assert status == 201
        self.known = body["id"]

    def call(self, method: str, path: str, data: bytes | None) -> tuple[int, Any]:
        async def go() -> tuple[int, Any]:
            async with self.client.request(method, path, data=data, allow_redirects=False,
                                           headers={"Content-Type": "application/json"}) as r:
                raw = await r.read()
                assert r.content_type == "application/json", (r.status, r.content_type, raw[:200])
                return r.status, json.loads(raw)
        return self.loop.run_until_complete(go())

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


@pytest.fixture(scope="module")
def api() -> Iterator[Api]:
    a = Api()
    yield a
    a.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=12)
strings = (st.text() | st.text(min_size=190, max_size=260)
           | st.sampled_from(["", " ", "\x00", "\ud800", "a\udfffb", "\u202e", "名前", "😀" * 100,
                              "x" * 201, "x" * 200, "x" * 100_000]))
bodies = st.one_of(
    st.fixed_dictionaries({}, optional={"name": strings | json_values,
                                        "owner": strings | json_values}).map(
        lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),  # deep nesting
    st.binary(max_size=300),
    st.just(b""), st.none())
ids = st.one_of(st.text(max_size=40), st.just("KNOWN"), st.sampled_from(
    ["..", ".", "%2e%2e", "a/b", "\x00", "\ud800", " ", "x" * 5000]))
paths = st.one_of(
    st.tuples(ids, st.sampled_from(["", "/start", "/stop", "/restart", "/x", "/"])).map(
        lambda t: ("/api/containers/{}" + t[1], t[0])),
    st.sampled_from([("/api/containers", ""), ("/api/containers/", ""), ("/healthz", "")]),
    st.text(max_size=30).map(lambda t: ("/api/{}", t)))
methods = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])


def _quote(text: str) -> str:
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


@HYPOTHESIS
@given(method=methods, path=paths, body=bodies)
# found by this test, fixed in services/web.py: 500s, and a name written before the
# owner failed (a partial write)
@example("POST", ("/api/containers", ""), json.dumps({"name": "\ud800"}).encode())
@example("POST", ("/api/containers", ""), json.dumps({"name": "a", "owner": "\udfff"}).encode())
@example("POST", ("/api/containers", ""), b"[" * 100_000 + b"]" * 100_000)
@example("POST", ("/api/containers", ""), b"x" * 3_000_000)  # over aiohttp's 1 MB: a 413
@example("PUT", ("/api/containers/{}", "KNOWN"), None)  # aiohttp's 405
def test_every_answer_is_json_2xx_or_4xx_and_a_rejection_writes_nothing(
        api: Api, method: str, path: tuple[str, str], body: bytes | None) -> None:
    template, cid = path
    url = template.format(_quote(api.known if cid == "KNOWN" else cid))
    before = (api.node.replica.state(), dict(api.node.replica.clock))
    status, answer = api.call(method, url, body)
    assert 200 <= status < 300 or 400 <= status < 500, (status, answer)
    if status >= 400:
        assert isinstance(answer, dict) and isinstance(answer.get("error"), str), answer
        assert (api.node.replica.state(), dict(api.node.replica.clock)) == before


EXAMPLE = ': send a JSON object such as {"name": "db", "owner": "ada"}'


@pytest.mark.parametrize(("body", "says"), [
    (b'{}', "'name' is required: a non-empty string"),
    (b'{"name": 5}', "'name' must be a non-empty string, not number"),
    (b'{"name": ["db"]}', "'name' must be a non-empty string, not array"),
    (b'{"name": null}', "'name' must be a non-empty string, not null"),
    (b'{"name": " "}', "'name' must be a non-empty string"),
    (b'{"name": "db", "owner": false}', "'owner' must be a non-empty string, not false"),
    (b'{"name":', "the body is not valid JSON (Expecting value: line 1 column 9 (char 8))"
     + EXAMPLE),
    (b"\xff\xfe", "the body is not UTF-8 text" + EXAMPLE),
    (b'["db"]', "the body must be a JSON object, not array" + EXAMPLE),
    (b"null", "the body must be a JSON object, not null" + EXAMPLE),
    (b'"db"', "the body must be a JSON object, not string" + EXAMPLE),
    (b"7.5", "the body must be a JSON object, not number" + EXAMPLE),
    (b"true", "the body must be a JSON object, not true" + EXAMPLE),
])
def test_a_create_that_is_not_a_valid_record_says_why_in_json_terms(
        api: Api, body: bytes, says: str) -> None:
    """The body, or a field of it, of the wrong kind: a 400 naming what was sent in JSON's
    terms (and, for the body, what to send instead); nothing is written."""
    before = (api.node.replica.state(), dict(api.node.replica.clock))
    status, answer = api.call("POST", "/api/containers", body)
    assert (status, answer["error"]) == (400, says), answer
    assert (api.node.replica.state(), dict(api.node.replica.clock)) == before


@pytest.mark.parametrize(("body", "says"), [
    (b'{"name": "db", "power_desired": "on"}',
     "unknown field 'power_desired': a create takes name, owner (a container is created off; "
     "POST /api/containers/{id}/start starts it)"),
    (b'{"name": "db", "owner": "ada", "extra": 1}', "unknown field 'extra': a create takes "
     "name, owner (a container is created off; POST /api/containers/{id}/start starts it)"),
    (b'{"name": "x\\u0000y"}', "'name' holds the control character U+0000: send printable "
     "text"),
    (b'{"name": "db", "owner": "a\\nb"}', "'owner' holds the control character U+000A: send "
     "printable text"),
    (b'{"name": "a\\u0085b"}', "'name' holds the control character U+0085: send printable "
     "text"),
])
def test_a_create_with_a_field_it_does_not_take_or_a_control_character_is_refused(
        api: Api, body: bytes, says: str) -> None:
    """A create takes a name and an owner, printable: a field it would not write (a power
    switch, a typo) or a control character (a NUL, a newline: it would garble logs and the
    page) gets a 400 saying so, and nothing is written."""
    before = (api.node.replica.state(), dict(api.node.replica.clock))
    status, answer = api.call("POST", "/api/containers", body)
    assert (status, answer["error"]) == (400, says), answer
    assert (api.node.replica.state(), dict(api.node.replica.clock)) == before


def test_a_name_in_any_script_is_taken(api: Api) -> None:
    """What is refused is control characters only: accents, scripts and emoji are names."""
    status, answer = api.call("POST", "/api/containers", json.dumps(
        {"name": "café 数据库 🚀", "owner": "Zoë"}).encode())
    assert status == 201 and answer["name"] == "café 数据库 🚀", answer


@pytest.mark.parametrize(("path", "says"), [
    ("/api/nodes?x=1", "unknown query parameter 'x'; this route takes none"),
    ("/api/containers/KNOWN?verbose=1", "unknown query parameter 'verbose'; this route takes "
     "none"),
    ("/api/containers/KNOWN/history?limit=5", "unknown query parameter 'limit'; this route "
     "takes none"),
    ("/api/events?nodes=true", "'nodes' must be 1 (node events too) or 0, not 'true'"),
    ("/api/events?node=a&node=b", "query parameter 'node' is given more than once"),
    ("/api/events?sort=id", "unknown query parameter 'sort'; this route takes nodes, owner, "
     "desired, actual, node"),
])
def test_every_api_route_refuses_a_query_parameter_it_does_not_take(
        api: Api, path: str, says: str) -> None:
    """A parameter a route does not take is a 400 on every ``/api/`` route (a flag that
    would be ignored, such as ``nodes=true`` for ``nodes=1``, too)."""
    status, answer = api.call("GET", path.replace("KNOWN", api.known), None)
    assert (status, answer["error"]) == (400, says), answer


def test_a_write_with_a_query_parameter_is_refused_and_writes_nothing(api: Api) -> None:
    before = (api.node.replica.state(), dict(api.node.replica.clock))
    status, answer = api.call("POST", f"/api/containers/{api.known}/start?force=1", None)
    assert (status, answer["error"]) == (
        400, "unknown query parameter 'force'; this route takes none"), answer
    assert (api.node.replica.state(), dict(api.node.replica.clock)) == before


def test_a_head_request_takes_the_parameters_of_its_get(api: Api) -> None:
    async def head() -> int:
        async with api.client.request("HEAD", "/api/containers?limit=5") as r:
            return r.status
    assert api.loop.run_until_complete(head()) == 200



@pytest.mark.parametrize(("body", "says"), [
    (b'{"name": ' + b"9" * 5000 + b"}", "the body's JSON holds a number too long"),
    (b'{"name": "a\\u2028b"}', "'name' holds the control character U+2028"),
    (b'{"name": "db", "owner": "a\\u202eb"}', "'owner' holds the control character U+202E"),
    (b'{"name": "\\u200b"}', "'name' has no visible character"),
    (b'{"name": "\\u0301\\u200d"}', "'name' has no visible character"),
])
def test_a_create_that_would_garble_or_cannot_be_read_is_refused(
        api: Api, body: bytes, says: str) -> None:
    """A number longer than Python converts (its 4,300-digit bound), a line or paragraph
    separator, a bidirectional override, or a name that shows nothing: a 400 (not a 500),
    and nothing is written."""
    before = (api.node.replica.state(), dict(api.node.replica.clock))
    status, answer = api.call("POST", "/api/containers", body)
    assert status == 400 and answer["error"].startswith(says), answer
    assert (api.node.replica.state(), dict(api.node.replica.clock)) == before


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_body_that_does_not_decode_by_its_content_encoding_is_a_400(
        api: Api, encoding: str) -> None:
    before = (api.node.replica.state(), dict(api.node.replica.clock))

    async def post() -> tuple[int, str, bytes]:
        async with api.client.post("/api/containers", data=b"not compressed", headers={
                "Content-Type": "application/json", "Content-Encoding": encoding}) as r:
            return r.status, r.content_type, await r.read()
    status, kind, raw = api.loop.run_until_complete(post())
    assert (status, kind) == (400, "application/json"), (status, kind, raw[:200])
    assert json.loads(raw)["error"].startswith("the body does not decode as its "
                                               "Content-Encoding says"), raw
    assert (api.node.replica.state(), dict(api.node.replica.clock)) == before


def test_the_event_streams_head_is_its_headers_alone(api: Api) -> None:
    """HTTP: a HEAD's answer has no body. The event stream's sent ': connected' and went
    on streaming, and the next request on that connection was never answered."""
    server = api.client.server

    async def head_then_get() -> bytes:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"HEAD /api/events HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        try:
            return await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
    data = api.loop.run_until_complete(head_then_get())
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head, data[:300]
    assert rest.startswith(b"HTTP/1.1 200"), data[:300]  # /healthz's answer, nothing before


def test_a_retired_web_answers_a_write_with_a_json_503() -> None:
    """A replica retired while it runs keeps running, and may write no more (README): its
    writes are refused with a 503 saying so, not a 500, and nothing is written."""
    a = Api(members=["web"])  # a member of a group with an agreed membership...
    try:
        a.node.replica.heartbeat(retired=True)  # ...retired while it runs
        before = (a.node.replica.state(), dict(a.node.replica.clock))
        status, answer = a.call("POST", "/api/containers", json.dumps({"name": "db"}).encode())
        assert status == 503 and "was retired from its group" in answer["error"], answer
        assert (a.node.replica.state(), dict(a.node.replica.clock)) == before
    finally:
        a.close()


def test_a_request_web_cannot_read_is_one_line_of_its_log(
        caplog: pytest.LogCaptureFixture) -> None:
    """A header over aiohttp's 8,190 bytes (or a malformed request line) is refused by its
    parser before any route runs; it logged a traceback at ERROR for it, some 20 lines
    for a client's error. Now one line at WARNING; the client still gets its 400."""
    import logging
    import socket

    from aiohttp import web

    from services.web import serve

    async def run() -> bytes:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        runner = await serve(None, "127.0.0.1", port, app=web.Application())  # type: ignore[arg-type]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(200), 5)
            writer.close()
            return answer
        finally:
            await runner.cleanup()

    with caplog.at_level(logging.INFO, logger="aiohttp.server"):
        answer = asyncio.run(run())
    assert answer.split(b" ")[1] == b"400", answer
    said = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert len(said) == 1 and said[0].levelno == logging.WARNING and said[0].exc_info is None
    assert "Got more than 8190 bytes" in said[0].getMessage(), said[0].getMessage()


def test_a_static_file_that_is_not_the_page_s_is_a_json_404(api: Api) -> None:
    """aiohttp's static route answered an empty 404 (``application/octet-stream``) for a
    file it does not have; every other error answer is JSON."""
    status, body = api.call("GET", "/static/nope.js", None)
    assert status == 404 and "no static file 'nope.js'" in body["error"]
