"""Bad command-line input, for every command: a one-line error, a non-zero exit (2 for a
usage error), no traceback, and nothing created or changed.

Each case runs ``python -m services.cli`` as an OS process in an empty working directory
(which must stay empty), several at a time.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

GOOD_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
NO_BROKER = "amqp://guest:guest@127.0.0.1:1/"  # nothing listens on port 1
UNWRITABLE = "/proc/1/crdt-ops-test"  # a directory nobody, not even root, may create files in


@dataclass
class Case:
    name: str
    args: list[str]
    code: int = 2
    says: str = ""  # a substring of the one line on stderr
    env: dict[str, str] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)  # paths that must not exist afterwards


def cases(d: Path, port_in_use: int, fake_site: Path) -> list[Case]:
    missing = str(d / "missing.sqlite")
    notdb = d / "notdb.sqlite"
    notdb.write_text("hello, not a database")
    empty = d / "empty.sqlite"
    with sqlite3.connect(empty) as db:  # a real SQLite file that holds no replica
        db.execute("create table t (x)")
    store = d / "store.sqlite"
    with sqlite3.connect(store) as db:  # as crdt_ops.transport.store.Store keeps a replica
        db.execute("create table meta (k text primary key, v blob not null)")
        db.execute("create table log (id integer primary key, data blob not null)")
        db.execute("insert into meta values ('replica_id', 'r1')")
    afile = d / "afile"
    afile.write_text("x")
    badring = d / "badring"
    badring.mkdir()
    (badring / "keyring.json").write_text("{not json")
    notjson = d / "notjson"
    notjson.write_text("nope")
    moved = d / "moved-node"  # the state of a node that ran in cell a
    moved.mkdir()
    (moved / "cell").write_text("a\n")
    out = str(d / "out.bin")
    keys = str(d / "keys")
    ring = make_keys(d / "ring", "web", "logic")  # a keyring with web's and logic's keys
    other_ring = make_keys(d / "other", "web")  # another web key, not in ``ring``
    url = ["--amqp-url", NO_BROKER]
    return [
        # snapshot
        Case("snapshot: a store that does not exist", ["snapshot", "--store", missing,
             "--out", out], says="no such file", absent=[missing, out]),
        Case("snapshot: a store that is not SQLite", ["snapshot", "--store", str(notdb),
             "--out", out], says="not a crdt-ops store", absent=[out]),
        Case("snapshot: a store that holds no replica", ["snapshot", "--store", str(empty),
             "--out", out], says="holds no replica", absent=[out]),
        Case("snapshot: --out in a missing directory", ["snapshot", "--store", str(store),
             "--out", str(d / "no" / "such" / "out.bin")], says="no such directory"),
        Case("snapshot: --out a directory", ["snapshot", "--store", str(store), "--out",
             str(d)], says="is a directory"),
        Case("snapshot: --out the store itself", ["snapshot", "--store", str(store), "--out",
             str(store)], says="store itself"),
        Case("snapshot: --out missing", ["snapshot", "--store", str(store)],
             says="--out"),
        # keygen
        Case("keygen: without the cryptography package", ["keygen", "web", "--out", keys],
             says="pip install 'crdt-ops[sign]'", env={"PYTHONPATH": str(fake_site)},
             absent=[keys]),
        Case("keygen: --out unwritable", ["keygen", "web", "--out", UNWRITABLE],
             says="permission denied"),
        Case("keygen: --out a file", ["keygen", "web", "--out", str(afile)],
             says="not a directory"),
        Case("keygen: a principal that is a path", ["keygen", "../evil", "--out", keys],
             says="not a principal", absent=[keys, str(d / "evil.key")]),
        Case("keygen: a principal ending in a dot", ["keygen", "web.", "--out", keys],
             says="not a principal", absent=[keys]),
        Case("keygen: a broken keyring.json", ["keygen", "web", "--out", str(badring)],
             says="keyring.json", absent=[str(badring / "web.key")]),
        Case("keygen: a key that exists already", ["keygen", "web", "--out", str(ring.parent)],
             says="web.key exists already"),
        # replica: settings
        Case("replica: --store in a missing directory", ["replica", *url, "--store",
             str(d / "no" / "s.sqlite")], says="no such directory"),
        Case("replica: --store not SQLite", ["replica", *url, "--store", str(notdb)],
             says="not a crdt-ops store"),
        Case("replica: --store unwritable", ["replica", *url, "--store",
             f"{UNWRITABLE}.sqlite"], says="permission denied"),
        Case("replica: --batch-ops not a number", ["replica", *url, "--batch-ops", "lots"],
             says="--batch-ops"),
        Case("replica: --batch-ops 0", ["replica", *url, "--batch-ops", "0"],
             says="--batch-ops"),
        Case("replica: --heartbeat-s negative", ["replica", *url, "--heartbeat-s", "-1"],
             says="--heartbeat-s must be at least 0.01 s, got -1"),
        Case("replica: --batch-delay-ms negative", ["replica", *url, "--batch-delay-ms",
             "-5"], says="--batch-delay-ms must be >= 0, got -5"),
        Case("replica: --amqp-url not AMQP", ["replica", "--amqp-url", "http://x/"],
             says="--amqp-url"),
        Case("replica: --amqp-url with a port that is no number",
             ["replica", "--amqp-url", "amqp://guest:secret@h:port/"], says="--amqp-url"),
        Case("replica: --amqp-url without a host", ["replica", "--amqp-url", "amqp:///"],
             says="no host"),
        Case("replica: --stream-max-age without a unit", ["replica", *url,
             "--stream-max-age", "7 days"], says="--stream-max-age"),
        Case("replica: --metrics-port out of range", ["replica", *url, "--metrics-port",
             "70000"], says="--metrics-port"),
        Case("replica: --metrics-port in use", ["replica", *url, "--metrics-port",
             str(port_in_use)], says="choose another with --metrics-port"),
        Case("replica: --bootstrap missing", ["replica", *url, "--bootstrap", missing],
             says="no such file", absent=[missing]),
        Case("replica: --signing-key missing", ["replica", *url, "--signing-key", missing],
             says="--signing-key"),
        Case("replica: --keyring not JSON", ["replica", *url, "--auth", "signature",
             "--keyring", str(notjson)], says="--keyring"),
        Case("replica: --auth signature without --keyring", ["replica", *url, "--auth",
             "signature"], says="--keyring"),
        Case("replica: --queue-type unknown", ["replica", *url, "--queue-type", "fast"],
             says="--queue-type"),
        Case("replica: --group with a slash", ["replica", *url, "--group", "a/b"],
             says="--group"),
        Case("replica: --replica-id with a space", ["replica", *url, "--replica-id", "a b"],
             says="--replica-id"),
        Case("replica: a bad CRDT_OPS_PREFETCH", ["replica", *url],
             env={"CRDT_OPS_PREFETCH": "many"}, says="CRDT_OPS_PREFETCH"),
        Case("replica: --ops negative", ["replica", *url, "--ops", "-1"], says="--ops"),
        Case("replica: --per-write 0", ["replica", *url, "--per-write", "0"],
             says="--per-write"),
        Case("replica: --state-file in a missing directory", ["replica", *url,
             "--state-file", str(d / "no" / "s.json")], says="--state-file"),
        Case("replica: an unknown flag", ["replica", "--colour", "blue"], says="--colour"),
        *[Case(f"replica: {flag} {value}", ["replica", *url, flag, value], says=flag)
          for flag, value in (("--heartbeat-s", "nan"), ("--heartbeat-s", "inf"),
                              ("--heartbeat-s", "1e-9"), ("--gap-timeout-s", "nan"),
                              ("--rate", "nan"))],
        # --auth signature: a replica whose messages every other one would refuse
        Case("replica: --auth signature without --signing-key",
             ["replica", *url, "--auth", "signature", "--keyring", str(ring)],
             says="needs --signing-key"),
        Case("replica: --auth signature with a key the keyring does not hold",
             ["replica", *url, "--auth", "signature", "--keyring", str(ring),
              "--signing-key", str(other_ring.parent / "web.key")], says="not the one"),
        Case("replica: --auth signature, --replica-id of another principal",
             ["replica", *url, "--auth", "signature", "--keyring", str(ring),
              "--signing-key", str(ring.parent / "web.key"), "--replica-id", "logic.1"],
             says="'logic.1' is not that principal's"),
        Case("delete-group under --auth signature: it signs nothing, needs no key",
             ["delete-group", "--group", "g", "--yes", "--watch-s", "0", *url], code=1,
             env={"CRDT_OPS_AUTH": "signature", "CRDT_OPS_KEYRING": str(ring)},
             says="could not delete group g"),
        Case("web: --auth signature with logic's key",
             ["web", *url, "--auth", "signature", "--keyring", str(ring),
              "--signing-key", str(ring.parent / "logic.key")],
             says="this service's principal 'web'"),
        # services
        Case("web: --port out of range", ["web", *url, "--port", "99999"], says="--port"),
        Case("web: --metrics-port the same as --port",
             ["web", *url, "--port", "18977", "--metrics-port", "18977"],
             says="--metrics-port 18977 is web's --port too"),
        Case("web: --replica-id of another service", ["web", *url, "--replica-id", "logic"],
             says="does not belong to this service's principal 'web'"),
        Case("web: --port not a number", ["web", *url, "--port", "http"], says="--port"),
        Case("web: a bad CRDT_OPS_HTTP_PORT", ["web", *url],
             env={"CRDT_OPS_HTTP_PORT": "eighty"}, says="CRDT_OPS_HTTP_PORT"),
        Case("web: a port in use", ["web", *url, "--port", str(port_in_use)],
             says=f"port {port_in_use}"),
        Case("web: a host that does not resolve", ["web", *url, "--host",
             "no-such-host.invalid"], says="--host"),
        Case("logic: --quota 0", ["logic", *url, "--quota", "0"], says="--quota"),
        Case("logic: --cells naming a cell twice", ["logic", *url, "--cells", "a,a"],
             says="--cells"),
        Case("web: --cells with an empty name", ["web", *url, "--cells", "a,"],
             says="--cells"),
        Case("worker: --cell with a dot", ["worker", *url, "--node", "n1", "--cell", "a.b"],
             says="--cell"),
        Case("worker: a node that ran in another cell",
             ["worker", *url, "--node", "n1", "--cell", "b", "--runtime-dir", str(moved)],
             says="node n1 belongs to cell 'a'"),
        Case("logic: a bad CRDT_OPS_QUOTA", ["logic", *url], env={"CRDT_OPS_QUOTA": "many"},
             says="CRDT_OPS_QUOTA"),
        Case("logic: --margin-s negative", ["logic", *url, "--margin-s", "-2"],
             says="--margin-s"),
        Case("logic: --margin-s nan (no node would ever count as gone)",
             ["logic", *url, "--margin-s", "nan"], says="--margin-s / CRDT_OPS_MARGIN_S must "
             "be a finite number"),
        Case("worker: --lease-s inf", ["worker", *url, "--node", "n1", "--lease-s", "inf"],
             says="--lease-s"),
        Case("worker: --node with a dot", ["worker", *url, "--node", "a.b", "--runtime",
             "process"], says="--node / CRDT_OPS_NODE: a node name must be"),
        Case("worker: --node too long", ["worker", *url, "--node", "n" * 300, "--runtime",
             "process"], says="--node / CRDT_OPS_NODE: a node name must be 1 to 64 bytes"),
        Case("worker: --node of 64 characters of 4 bytes each", ["worker", *url, "--node",
             "\U0001f600" * 64, "--runtime", "process"], says="must be 1 to 64 bytes"),
        Case("worker: --capacity negative", ["worker", *url, "--capacity", "-1"],
             says="--capacity"),
        Case("worker: a bad CRDT_OPS_CAPACITY", ["worker", *url],
             env={"CRDT_OPS_CAPACITY": "ten"}, says="CRDT_OPS_CAPACITY"),
        Case("worker: --lease-s too short", ["worker", *url, "--lease-s", "1"],
             says="--lease-s"),
        Case("worker: a --command that is not there", ["worker", *url, "--runtime",
             "process", "--command", "no-such-binary-3f2a --flag"], says="--command"),
        Case("worker: a --command with an open quote", ["worker", *url, "--runtime",
             "process", "--command", "sleep 'forever"], says="--command"),
        Case("worker: --runtime-dir unwritable", ["worker", *url, "--runtime", "process",
             "--runtime-dir", UNWRITABLE], says="--runtime-dir"),
        Case("demo: --port out of range", ["demo", *url, "--port", "0"], says="--port"),
        # the demo runs four services: one replica's settings are refused, with the reason
        *[Case(f"demo: {flag}", ["demo", *url, flag, value], says=f"{flag} is not for the demo: ")
          for flag, value in (("--replica-id", "web"), ("--store", str(d / "s.sqlite")),
                              ("--auth", "user-id"), ("--trusted-users", "ops"),
                              ("--signing-key", "k.key"), ("--keyring", "ring.json"),
                              ("--bootstrap", "s.bin"), ("--metrics-port", "9100"))],
        # retire: the broker's answer is the bad input here
        Case("retire: a wrong password", ["retire", "ghost", "--amqp-url",
             GOOD_URL.replace("guest:guest", "guest:wrong-password")], code=1,
             says="could not retire"),
        Case("retire: no broker", ["retire", "ghost", *url], code=1,
             says="could not retire"),
        # in-memory tools
        Case("simulate: --replicas 0", ["simulate", "--replicas", "0"], says="--replicas"),
        Case("histories: --count negative", ["histories", "--count", "-5"], says="--count"),
        Case("story: --seed not a number", ["story", "--seed", "x"], says="--seed"),
        Case("chaos: --replicas 2", ["chaos", "--replicas", "2"], says="--replicas"),
        Case("chaos: --keep-dir unwritable", ["chaos", "--keep-dir", UNWRITABLE],
             says="--keep-dir"),
        Case("fuzz: --messages negative", ["fuzz", "--messages", "-1"], says="--messages"),
        Case("fuzz: --amqp-url not AMQP", ["fuzz", "--amqp-url", "nope"], says="--amqp-url"),
        Case("no such command", ["teleport"], says="invalid choice"),
        # the logs' variables, checked as the settings are (a typo crashed, or was ignored)
        Case("CRDT_OPS_LOG an unknown level", ["snapshot", "--store", missing, "--out", out],
             says="CRDT_OPS_LOG must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL (any "
                  "case), not 'VERBOSE'", env={"CRDT_OPS_LOG": "VERBOSE"}),
        Case("CRDT_OPS_LOG_FORMAT misspelt", ["snapshot", "--store", missing, "--out", out],
             says="CRDT_OPS_LOG_FORMAT must be text or json, not 'jsn'",
             env={"CRDT_OPS_LOG_FORMAT": "jsn"}),
        # an unknown flag names the --help of the command it was given to
        Case("web: an unknown flag", ["web", "--bogus"],
             says="crdt-ops web: error: unrecognized arguments: --bogus (see crdt-ops web "
                  "--help)"),
        Case("worker: an unknown flag and a stray word", ["worker", "--nodes", "n1", "x"],
             says="(see crdt-ops worker --help)"),
    ]


def make_keys(out: Path, *principals: str) -> Path:
    """Keys for ``principals`` in ``out`` (as ``crdt-ops keygen`` writes them); returns the
    keyring's path."""
    from crdt_ops.transport.signing import keygen

    ring = out / "keyring.json"
    for p in principals:
        _, ring = keygen(p, out)
    return ring


def run(case: Case, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRDT_OPS_")}
    env.update(case.env)
    env["PYTHONPATH"] = os.pathsep.join(
        [*case.env.get("PYTHONPATH", "").split(os.pathsep),
         str(Path(__file__).resolve().parents[2])]).strip(os.pathsep)
    return subprocess.run([sys.executable, "-m", "services.cli", *case.args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def port_in_use() -> Callable[[], int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield lambda: int(s.getsockname()[1])  # type: ignore[misc]
    s.close()


def test_every_command_refuses_bad_input_in_one_line(tmp_path: Path,
                                                      port_in_use: Callable[[], int]) -> None:
    files = tmp_path / "files"
    files.mkdir()
    fake_site = tmp_path / "site"  # a cryptography package that cannot be imported
    (fake_site / "cryptography").mkdir(parents=True)
    (fake_site / "cryptography" / "__init__.py").write_text(
        "raise ImportError('cryptography is not installed (test)')\n")
    all_cases = cases(files, port_in_use(), fake_site)
    before = sorted(p.name for p in files.iterdir())
    dirs = []
    for i in range(len(all_cases)):
        (tmp_path / f"cwd-{i}").mkdir()
        dirs.append(tmp_path / f"cwd-{i}")
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, all_cases, dirs))
    problems = []
    for case, cwd, done in zip(all_cases, dirs, results, strict=True):
        lines = done.stderr.strip().splitlines()
        why = []
        if done.returncode != case.code:
            why.append(f"exit {done.returncode}, not {case.code}")
        if "Traceback" in done.stderr or len(lines) != 1:
            why.append(f"{len(lines)} lines on stderr")
        elif case.says not in lines[0]:
            why.append(f"{case.says!r} not said")
        if done.stdout.strip():
            why.append("printed on stdout")
        if list(cwd.iterdir()):
            why.append(f"created {[p.name for p in cwd.iterdir()]} in its directory")
        made = [p for p in case.absent if os.path.exists(p)]
        if made:
            why.append(f"created {made}")
        if why:
            problems.append(f"{case.name}: {'; '.join(why)}\n  crdt-ops {' '.join(case.args)}"
                            f"\n  stderr: {done.stderr.strip()[-1500:]}")
    assert not problems, "\n".join(problems)
    assert sorted(p.name for p in files.iterdir()) == before


def test_placement_settings_are_flags_and_variables_shown_with_their_defaults() -> None:
    """logic's quota and margin, a worker's capacity and lease: a flag, an environment
    variable, and the default, in --help (the demo passes them on)."""
    want = {"logic": ["--quota", "CRDT_OPS_QUOTA; default 20", "--margin-s",
                      "CRDT_OPS_MARGIN_S; default 1"],
            "worker": ["--capacity", "CRDT_OPS_CAPACITY; default 10", "--lease-s",
                       "CRDT_OPS_LEASE_S; default 30"]}
    want["demo"] = want["logic"] + want["worker"]
    for command, texts in want.items():
        done = subprocess.run([sys.executable, "-m", "services.cli", command, "--help"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0
        text = " ".join(done.stdout.split())
        for t in texts:
            assert t in text, (command, t)


def test_version_is_printed_on_stdout(tmp_path: Path) -> None:
    """``crdt-ops --version`` prints the package's version and exits 0 (argparse would
    otherwise ask for a command)."""
    import crdt_ops

    done = run(Case("version", ["--version"], code=0), tmp_path)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (
        0, f"crdt-ops {crdt_ops.__version__}", "")


def test_a_misspelt_variable_is_named_with_the_one_meant(tmp_path: Path) -> None:
    """A ``CRDT_OPS_*`` variable no command reads gets one line each, with the nearest
    name; the command runs all the same."""
    done = run(Case("story", ["story"], code=0,
                    env={"CRDT_OPS_QOUTA": "3", "CRDT_OPS_LOG": "warning"}), tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[0] == ("crdt-ops story: ignoring CRDT_OPS_QOUTA: no "
                                           "crdt-ops setting has that name (did you mean "
                                           "CRDT_OPS_QUOTA?)"), done.stderr


def test_a_variable_spelt_after_a_flag_names_the_flags_variable(tmp_path: Path) -> None:
    """``--port`` reads ``CRDT_OPS_HTTP_PORT``: a ``CRDT_OPS_PORT`` (the name the flag would
    give) is pointed there, not at the nearest spelling (``CRDT_OPS_HOST``)."""
    done = run(Case("story", ["story"], code=0,
                    env={"CRDT_OPS_PORT": "9090", "CRDT_OPS_LOG": "warning"}), tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[0].endswith("(did you mean CRDT_OPS_HTTP_PORT?)"), \
        done.stderr


def test_a_snapshot_of_a_store_in_use_says_to_stop_its_replica(tmp_path: Path) -> None:
    from crdt_ops.transport.store import Store

    held = Store(tmp_path / "s.sqlite")  # as a running replica holds it
    held.put("replica_id", b"r1")
    try:
        done = run(Case("snapshot", ["snapshot", "--store", str(tmp_path / "s.sqlite"), "--out",
                                     str(tmp_path / "o.bin")]), tmp_path)
    finally:
        held.close()
    assert done.returncode == 2, done
    assert done.stderr.strip().endswith("a replica runs on it: stop it first (a snapshot is "
                                        "taken of a stopped replica's store)"), done.stderr
    assert not (tmp_path / "o.bin").exists()


def test_keygen_makes_its_out_directory(tmp_path: Path) -> None:
    """``crdt-ops keygen web --out keys/web`` on a fresh machine: the directory is made (it
    was refused as 'no such directory', though --help says it is made)."""
    out = tmp_path / "keys" / "web"
    done = run(Case("keygen", ["keygen", "web", "--out", str(out)], code=0), tmp_path)
    assert done.returncode == 0, done.stderr
    assert (out / "web.key").is_file() and (out / "keyring.json").is_file()
    again = run(Case("keygen", ["keygen", "web", "--out", str(out), "--force"], code=0),
                tmp_path)
    assert again.returncode == 0, again.stderr  # --force replaces it
