"""The worker's runtimes on their own: real processes, pid files, adoption, failures."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from services.lease import boot_id
from services.pids import alive
from services.runtime import DockerRuntime, ProcessRuntime, RuntimeError_, StartWithdrawn


def test_process_runtime_starts_stops_and_is_found_again(tmp_path: Path) -> None:
    rt = ProcessRuntime(tmp_path)
    pid = rt.start("c1")
    assert rt.running() == {"c1": pid}
    assert ProcessRuntime(tmp_path).running() == {"c1": pid}  # a new worker finds it
    again = rt.start("c1")  # starting again replaces the instance
    assert again != pid and rt.running() == {"c1": again}
    ProcessRuntime(tmp_path).stop("c1")  # stopped by a worker that did not start it
    assert rt.running() == {}
    assert not alive(again)  # gone, or a zombie its parent (this test) has not reaped


def _stranger() -> subprocess.Popen[bytes]:
    """A live process that is no container's, leading a session of its own (a stop
    would signal its process group)."""
    return subprocess.Popen(["sleep", "60"], start_new_session=True)


def test_a_pid_file_names_its_process_by_pid_start_time_and_boot(tmp_path: Path) -> None:
    rt = ProcessRuntime(tmp_path)
    pid = rt.start("c1")
    try:
        # its start time is not read as it starts (that waits for the exec): it is polled
        assert (tmp_path / "c1.pid").read_text().split() == [str(pid), "-", boot_id()]
        assert ProcessRuntime(tmp_path).running() == {"c1": pid}  # a new worker finds it
        (tmp_path / "c1.pid").write_text(str(pid))  # as an older version wrote it
        assert ProcessRuntime(tmp_path).running() == {"c1": pid}  # the container's own:
        since = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        assert (tmp_path / "c1.pid").read_text().split() == [str(pid), since, boot_id()]
    finally:
        rt.stop("c1")


@pytest.mark.parametrize("stale", ["an earlier boot", "another start time", "no start time",
                                   "its pid alone"])
def test_a_pid_file_whose_pid_was_given_to_another_process_names_nothing(
        tmp_path: Path, stale: str) -> None:
    """After a reboot, or once the container's process is gone, its pid may be another
    program's: that one is not taken for the container, and a stop does not signal it."""
    other, rt = _stranger(), ProcessRuntime(tmp_path)
    try:
        since = int(Path(f"/proc/{other.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        if stale == "an earlier boot":
            record = f"{other.pid} {since} 00000000-0000-4000-8000-000000000000"
        elif stale == "another start time":
            record = f"{other.pid} {since + 1} {boot_id()}"
        elif stale == "no start time":  # recorded as it started, by a worker since gone
            record = f"{other.pid} - {boot_id()}"
        else:  # as an older version wrote it
            record = str(other.pid)
        (tmp_path / "c1.pid").write_text(record)
        assert rt.running() == {}
        assert rt.pid("c1") is None
        rt.stop("c1", grace_s=0.5)
        assert other.poll() is None  # not signalled
        if stale != "another start time":
            assert not (tmp_path / "c1.pid").exists()
        started = rt.start("c1")  # the container is started: nothing ran it
        assert rt.running() == {"c1": started} and started != other.pid
    finally:
        rt.stop("c1")
        other.kill()
        other.wait()


def test_a_command_that_cannot_run_is_a_clear_error(tmp_path: Path) -> None:
    rt = ProcessRuntime(tmp_path, "/nonexistent/binary --flag")
    with pytest.raises(RuntimeError_, match="cannot run '/nonexistent/binary --flag'"):
        rt.start("c1")
    assert rt.running() == {}


def test_docker_runtime_refused_without_an_engine() -> None:
    if DockerRuntime.available():
        pytest.skip("a Docker engine answers here")  # then the refusal cannot be shown
    done = subprocess.run([sys.executable, "-m", "services.cli", "worker", "--runtime", "docker",
                           "--amqp-url", "amqp://guest:guest@127.0.0.1:1/"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "no Docker engine answers" in done.stderr


def _forget(rt: ProcessRuntime, cid: str) -> None:
    """As if the worker that started ``cid`` died before it wrote the pid file."""
    (rt.state_dir / f"{cid}.pid").unlink()


def test_an_instance_started_but_not_recorded_is_found_by_its_environment(
        tmp_path: Path) -> None:
    rt = ProcessRuntime(tmp_path / "a", "sh -c 'sleep 1000 & wait'")
    other = ProcessRuntime(tmp_path / "b")
    pid, theirs = rt.start("c1"), other.start("c1")
    try:
        _forget(rt, "c1")
        fresh = ProcessRuntime(tmp_path / "a")  # a worker starting after the crash
        assert fresh.running() == {}  # no pid file: unseen until adopted
        # the shell, not its child (which inherits the environment in the same session),
        # nor the other runtime's instance of the same container
        assert fresh.adopt_strays() == {"c1": pid}
        since = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        assert (tmp_path / "a" / "c1.pid").read_text().split() == [str(pid), since, boot_id()]
        assert fresh.running() == {"c1": pid} == ProcessRuntime(tmp_path / "a").running()
        assert fresh.adopt_strays() == {}  # recorded now: nothing more to adopt
        assert other.running() == {"c1": theirs}
    finally:
        for r in (ProcessRuntime(tmp_path / "a"), other):
            for cid in r.running():
                r.stop(cid, grace_s=0.1)
    assert not alive(pid) and not alive(theirs)


def test_stop_all_stops_containers_that_ignore_sigterm_within_one_grace(tmp_path: Path) -> None:
    """SIGTERM to all, one wait, SIGKILL to the rest: 10 such containers in about one
    grace (1 s here), where stopping them one by one took 10 half graces (5 s); the bound
    between the two leaves a loaded machine 3 s."""
    from tests.services.test_guard import STUBBORN

    rt = ProcessRuntime(tmp_path, command=STUBBORN)
    started = [rt.start(f"c{i}") for i in range(10)]
    time.sleep(0.3)  # each shell has set its trap
    t0 = time.monotonic()
    rt.stop_all(rt.running(), grace_s=1.0)
    took = time.monotonic() - t0
    assert not any(alive(p) for p in started) and rt.running() == {}
    assert 1.0 <= took < 4.0, f"stop_all took {took:.1f} s"


def test_a_pid_file_deleted_under_a_running_instance_is_written_again(tmp_path: Path) -> None:
    """A cleaner that emptied the runtime directory made the worker's next full reconcile
    find nothing running and start every container a second time."""
    rt = ProcessRuntime(tmp_path)
    pid = rt.start("c1")
    try:
        (tmp_path / "c1.pid").unlink()
        assert rt.running() == {"c1": pid}
        assert (tmp_path / "c1.pid").read_text().split()[0] == str(pid)
        assert ProcessRuntime(tmp_path).running() == {"c1": pid}  # the guard sees it too
    finally:
        rt.stop("c1")


def test_a_process_runtime_takes_calls_for_different_containers_from_several_threads(
        tmp_path: Path) -> None:
    """The worker calls its runtime from several threads at once (never two calls at once
    for one container), and lists what runs meanwhile: each thread starts, restarts and
    stops containers of its own while another lists; no call fails, a listing names only
    instances started for their container, and at the end it is what was left running."""
    import concurrent.futures
    import threading

    rt = ProcessRuntime(tmp_path)
    done = threading.Event()
    seen: list[tuple[str, int]] = []  # (container, pid) of every listing
    started: dict[str, set[int]] = {}  # each thread writes its own containers' entries

    def churn(n: int) -> dict[str, int]:
        left = {}
        for round_ in range(4):
            for k in range(3):
                cid = f"t{n}-c{k}"
                pid = rt.start(cid)
                started.setdefault(cid, set()).add(pid)
                if (round_ + k) % 2:
                    rt.stop(cid, grace_s=1.0)
                    left.pop(cid, None)
                else:
                    left[cid] = pid
        return left

    def listing() -> int:
        looks = 0
        while not done.is_set():
            seen.extend(rt.running().items())
            looks += 1
        return looks

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        lister = pool.submit(listing)
        lefts = list(pool.map(churn, range(5)))
        done.set()
        assert lister.result() > 0
    expected = {cid: pid for left in lefts for cid, pid in left.items()}
    try:
        assert [(cid, pid) for cid, pid in seen if pid not in started[cid]] == []
        assert rt.running() == expected
        assert ProcessRuntime(tmp_path).running() == expected  # and its pid files say so
    finally:
        rt.stop_all(expected, grace_s=1.0)
    assert rt.running() == {}


#: A stand-in for the ``docker`` command line (no Docker engine runs here): the containers
#: in the JSON file ``$FAKE_DOCKER_STATE`` ({name: [container id, pid]}), ``ps`` and
#: ``inspect -f`` (``.Name``, ``.State.Running``, ``.State.Pid``) as the worker's
#: DockerRuntime calls them. ``inspect`` of several prints those
#: it finds and "Error: No such object: NAME" for the others, and exits with status 1, as
#: docker's does (moby/moby pull request 30648). ``ps`` removes the names in the file's
#: "vanish" list after listing them (a container removed on another thread meanwhile).
FAKE_DOCKER = r'''#!/usr/bin/env python3
import json, os, sys
path = os.environ["FAKE_DOCKER_STATE"]
state = json.load(open(path))
if os.environ.get("FAKE_DOCKER_DOWN"):
    sys.exit("Cannot connect to the Docker daemon at unix:///var/run/docker.sock.")
cmd = sys.argv[1]
if cmd == "ps":
    for name, (cid, pid) in state["containers"].items():
        print(cid, "", name, sep="\t")  # (container id, node label, name)
    for name in state.get("vanish", []):
        state["containers"].pop(name, None)
    json.dump(state, open(path, "w"))
elif cmd == "inspect":
    missing = False
    for name in sys.argv[4:]:
        if name in state["containers"]:
            fields = {"{{.Name}}": "/" + name, "{{.State.Running}}": "true",
                      "{{.State.Pid}}": str(state["containers"][name][1])}
            out = sys.argv[3]
            for field, value in fields.items():
                out = out.replace(field, value)
            print(out)
        else:
            print(f"Error: No such object: {name}", file=sys.stderr)
            missing = True
    sys.exit(1 if missing else 0)
else:
    sys.exit(f"unknown command {cmd}")
'''


def test_docker_listing_leaves_out_a_container_removed_while_it_lists(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker lists what runs while its other threads stop and start containers: one
    removed between ``docker ps`` and ``docker inspect`` made the listing raise, and the
    worker end. It is left out now; any other failure still raises."""
    import json
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"containers": {"crdt-ops-a": ["a", 101],
                                                "crdt-ops-b": ["b", 102]},
                                 "vanish": ["crdt-ops-b"]}))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_STATE", str(state))
    rt = DockerRuntime()
    assert rt.running() == {"a": 101}
    assert rt.running() == {"a": 101}  # (b is gone for good now)
    monkeypatch.setenv("FAKE_DOCKER_DOWN", "1")
    with pytest.raises(RuntimeError_, match="Cannot connect to the Docker daemon"):
        rt.running()


def test_a_container_still_in_its_exec_is_found_by_another_runtime(tmp_path: Path) -> None:
    """Right after ``Popen`` returns, the new process may still be in its ``exec``, and
    its environment reads empty (some 5 % of reads on this project's VM): another
    runtime reading its pid file then (a restarted worker, the guard) took it for another
    program's, removed the pid file, and lost the container."""
    rt = ProcessRuntime(tmp_path)
    try:
        for _ in range(200):
            pid = rt.start("c")
            assert ProcessRuntime(tmp_path).running() == {"c": pid}
            rt.stop("c", grace_s=1.0)
    finally:
        rt.stop("c", grace_s=1.0)


#: A container whose process starts a child that ignores SIGTERM (as a shell wrapper's or a
#: supervisor's may), then waits: it exits at once on SIGTERM, its child does not.
WITH_A_STUBBORN_CHILD = "sh -c \"(trap '' TERM; exec sleep 1000000) & exec sleep 1000000\""


def _processes(cid: str, root: Path) -> list[int]:
    """The live processes started for container ``cid`` by the runtime of ``root`` (their
    environment says so), whatever their group."""
    import os

    marker = {f"CRDT_OPS_CONTAINER={cid}".encode(), f"CRDT_OPS_RUNTIME={root.resolve()}".encode()}
    out = []
    for name in os.listdir("/proc"):
        try:
            env = set(Path(f"/proc/{name}/environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if name.isdigit() and marker <= env and alive(int(name)):
            out.append(int(name))
    return sorted(out)


def _settled(cid: str, root: Path, n: int) -> list[int]:
    """:func:`_processes` once there are ``n`` of them, each past its ``exec`` of
    ``sleep`` (so the child's ``trap`` is set: counted before it, it died on SIGTERM)."""
    def execed(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep")
        except OSError:
            return False
    deadline = time.monotonic() + 5
    while (len(found := _processes(cid, root)) != n or not all(map(execed, found))) \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(found) == n and all(map(execed, found)), found
    return found


def _gone(check: Callable[[], bool], what: str) -> None:
    """Wait up to 5 s for ``check()`` (processes sent SIGKILL are not waited for)."""
    deadline = time.monotonic() + 5
    while not check() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert check(), what


def test_a_stop_ends_the_children_of_a_container_that_ignore_sigterm(tmp_path: Path) -> None:
    """A stop waited for the container's first process alone, which exited at once on
    SIGTERM: its child ran on, unseen by every later listing, beside the instance that
    replaced it, or on the node the container moved to."""
    rt = ProcessRuntime(tmp_path, WITH_A_STUBBORN_CHILD)
    rt.start("c1")
    _settled("c1", tmp_path, 2)
    t0 = time.monotonic()
    rt.stop("c1", grace_s=0.5)
    took = time.monotonic() - t0
    assert _processes("c1", tmp_path) == [] and rt.running() == {}
    assert 0.5 <= took < 4.0, f"the stop took {took:.1f} s"  # SIGKILL after the grace


def test_the_processes_of_an_instance_that_exited_are_ended_before_it_runs_again(
        tmp_path: Path) -> None:
    rt = ProcessRuntime(tmp_path, WITH_A_STUBBORN_CHILD)
    pid = rt.start("c1")
    leader, child = _settled("c1", tmp_path, 2)
    assert leader == pid
    import os
    import signal

    os.kill(pid, signal.SIGTERM)  # the container's process exits, its child does not
    deadline = time.monotonic() + 5
    while rt.pid("c1") is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rt.pid("c1") is None  # the instance is gone: its child is ended with it
    _gone(lambda: not alive(child) and _processes("c1", tmp_path) == [], "the child killed")
    again = rt.start("c1")
    assert _settled("c1", tmp_path, 2)[0] == again  # only the new instance's two
    rt.stop("c1", grace_s=0.2)


def test_what_runs_of_a_container_without_its_record_is_found_and_only_one_instance_kept(
        tmp_path: Path) -> None:
    """A worker killed between starting an instance and recording it, then restarted and
    killed again likewise, left two instances of one container; one whose instance then
    exited left its child. Each ran unseen beside the instance a new worker adopted."""
    import os
    import signal

    first = (w1 := ProcessRuntime(tmp_path, WITH_A_STUBBORN_CHILD)).start("c1")
    _forget(w1, "c1")
    second = (w2 := ProcessRuntime(tmp_path, WITH_A_STUBBORN_CHILD)).start("c1")
    _forget(w2, "c1")
    c2 = w2.start("c2")
    _forget(w2, "c2")
    _settled("c1", tmp_path, 4)
    child = [p for p in _settled("c2", tmp_path, 2) if p != c2]
    os.kill(c2, signal.SIGTERM)  # c2's instance exits unrecorded; its child runs on
    deadline = time.monotonic() + 5
    while alive(c2, w2._children[c2]) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _processes("c2", tmp_path) == child
    fresh = ProcessRuntime(tmp_path, WITH_A_STUBBORN_CHILD)  # a worker starting afresh
    assert fresh.adopt_strays() == {"c1": first}  # the oldest, alone
    left = _processes("c1", tmp_path)
    assert first in left and second not in left and len(left) == 2
    _gone(lambda: _processes("c2", tmp_path) == [], "the leftover killed")
    assert fresh.running() == {"c1": first}
    fresh.stop("c1", grace_s=0.2)
    assert _processes("c1", tmp_path) == []


#: A stand-in for one Docker engine's command line that several runtimes share: ``create``
#: (with its ``--name`` and ``--label``s: a container that does not run yet), ``start``,
#: ``rm -f`` (no error for a name not there, as since Docker 20.10), ``ps --filter
#: label=K --format T`` (those that run) and ``inspect -f T`` (the fields the runtime asks
#: for; a label missing from ``index .Config.Labels`` prints ``<no value>``, as Go's
#: templates do); the containers in the JSON file ``$FAKE_DOCKER_STATE``.
FAKE_ENGINE = r'''#!/usr/bin/env python3
import json, os, re, sys
path = os.environ["FAKE_DOCKER_STATE"]
state = json.load(open(path)) if os.path.exists(path) else {"next": 5000, "containers": {}}
have = state["containers"]
cmd, args = sys.argv[1], sys.argv[2:]
def fill(template, name):
    c = have[name]
    out = re.sub(r'\{\{\.Label "([^"]+)"\}\}', lambda m: c["labels"].get(m.group(1), ""),
                 template)
    out = re.sub(r'\{\{index \.Config\.Labels "([^"]+)"\}\}',
                 lambda m: c["labels"].get(m.group(1), "<no value>"), out)
    up = c.get("running", True)
    for field, value in (("{{.Names}}", name), ("{{.Name}}", "/" + name),
                         ("{{.State.Running}}", "true" if up else "false"),
                         ("{{.State.Pid}}", str(c["pid"] if up else 0))):
        out = out.replace(field, value)
    return out
status = 0
if cmd == "create":
    name = args[args.index("--name") + 1]
    labels = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--label")
    have[name] = {"labels": labels, "pid": 0, "running": False}
elif cmd == "start":
    state["next"] += 1
    have[args[0]].update(pid=state["next"], running=True)
elif cmd == "rm":
    for name in args[1:]:
        have.pop(name, None)
elif cmd == "stop":
    state.setdefault("stopped", []).append(args[:2] + [n for n in args[2:] if n in have])
    for name in args[2:]:
        if name not in have:
            print(f"Error response from daemon: No such container: {name}", file=sys.stderr)
            status = 1
elif cmd == "ps":
    key = args[args.index("--filter") + 1].split("=", 1)[1]
    for name in list(have):
        if key in have[name]["labels"] and have[name].get("running", True):
            print(fill(args[args.index("--format") + 1], name))
elif cmd == "inspect":
    for name in args[2:]:
        if name in have:
            print(fill(args[1], name))
        else:
            print(f"Error: No such object: {name}", file=sys.stderr)
            status = 1
json.dump(state, open(path, "w"))
sys.exit(status)
'''


def _fake_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put :data:`FAKE_ENGINE` first on the ``PATH`` as ``docker``; returns its state file."""
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_ENGINE)
    (bin_dir / "docker").chmod(0o755)
    state = tmp_path / "engine.json"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_STATE", str(state))
    return state


def test_workers_sharing_one_docker_engine_each_run_only_their_own_node_s_containers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Docker containers were named and labelled by container id alone: a worker's full
    reconcile listed the other node's containers on the same engine, found no placement for
    them, and stopped them; the other node started them again, and so on, every second."""
    import json

    state = _fake_engine(tmp_path, monkeypatch)
    n1, n2 = DockerRuntime(node="n1"), DockerRuntime(node="n2")
    p1, p2 = n1.start("c1"), n2.start("c2")
    theirs = n2.start("c1")  # the same container on both nodes (a move): two containers
    assert n1.running() == {"c1": p1} and n2.running() == {"c2": p2, "c1": theirs}
    assert n1.pid("c2") is None and n1.pid("c1") == p1
    stops = len(json.loads(state.read_text())["stopped"])  # (each start stops the old first)
    n1.stop_all(["c1", "c2"], grace_s=2.5)  # a lease's end on n1: n2's go on
    assert json.loads(state.read_text())["stopped"][stops:] == [["-t", "3", "crdt-ops-n1-c1"]]
    assert n1.running() == {} and n2.running() == {"c2": p2, "c1": theirs}
    assert n2.guard_args() == ["--docker", "--node", "n2"]
    # a container of a version that named no node is this node's (one worker per engine)
    engine = json.loads(state.read_text())
    engine["containers"]["crdt-ops-c9"] = {"labels": {"crdt-ops.container": "c9"}, "pid": 9}
    state.write_text(json.dumps(engine))
    assert n1.running() == {"c9": 9} and n1.pid("c9") == 9
    n1.stop("c9")
    assert n1.running() == {} and set(json.loads(state.read_text())["containers"]) == {
        "crdt-ops-n2-c2", "crdt-ops-n2-c1"}


def test_a_process_that_may_not_be_signalled_is_said_not_raised(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A container's child running as another user (started through sudo) made every stop
    and listing raise PermissionError: the guard retried for ever and stopped none of the
    node's containers at the lease's end, and the worker's lease-end stop ended it."""
    import os
    import signal

    from services import pids

    rt = ProcessRuntime(tmp_path, WITH_A_STUBBORN_CHILD)
    pid = rt.start("c1")
    _settled("c1", tmp_path, 2)
    real = os.killpg

    def refused(pgid: int, sig: int) -> None:
        if pgid == pid and sig != 0:
            raise PermissionError(1, "Operation not permitted")
        real(pgid, sig)

    monkeypatch.setattr(pids.os, "killpg", refused)
    try:
        rt.stop_all(["c1"], grace_s=0.1)  # said, not raised
        assert "not allowed to signal it" in caplog.text
    finally:
        monkeypatch.undo()
        os.killpg(pid, signal.SIGKILL)
    _gone(lambda: _processes("c1", tmp_path) == [], "the test's container killed")


def test_a_daemon_a_container_started_is_no_second_instance(tmp_path: Path) -> None:
    """A process a container starts in a session of its own (``setsid``, as daemons do)
    leads a session with the container's environment, as an instance does: it was
    stopped as an extra instance at every worker's start and every guard's look."""
    rt = ProcessRuntime(tmp_path, "sh -c 'setsid sleep 1000001 & exec sleep 1000000'")
    pid = rt.start("c1")
    try:
        daemon = [p for p in _settled("c1", tmp_path, 2) if p != pid]
        assert ProcessRuntime(tmp_path).adopt_strays() == {}  # (recorded already)
        assert _processes("c1", tmp_path) == sorted([pid, *daemon])
        (tmp_path / "c1.pid").unlink()  # its worker died before it recorded the start
        assert ProcessRuntime(tmp_path).adopt_strays() == {"c1": pid}
        assert _processes("c1", tmp_path) == sorted([pid, *daemon])
    finally:
        import os
        import signal

        for p in _processes("c1", tmp_path):
            os.kill(p, signal.SIGKILL)


def test_a_start_whose_lease_ended_during_its_pull_makes_no_container_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``docker run`` pulled the image and made the container run at once: begun just
    before the lease's end, a long pull made it run after, when logic may have placed it
    elsewhere. A start now creates the container (the pull), then asks ``may_start``, and
    only then starts it; told no, it removes what it created. The same rule for a process."""
    import json

    state = _fake_engine(tmp_path, monkeypatch)
    rt = DockerRuntime(node="n1")
    asked: list[dict[str, object]] = []

    def lease_over() -> bool:  # (asked once the container exists, before it runs)
        asked.append(json.loads(state.read_text())["containers"]["crdt-ops-n1-c1"])
        return False

    with pytest.raises(StartWithdrawn):
        rt.start("c1", 1, lease_over)
    assert [c["running"] for c in asked] == [False]
    assert json.loads(state.read_text())["containers"] == {} and rt.running() == {}
    pid = rt.start("c1", 1, lambda: True)
    assert rt.running() == {"c1": pid} and rt.generation("c1") == 1
    processes = ProcessRuntime(tmp_path / "processes")
    with pytest.raises(StartWithdrawn):
        processes.start("c1", 0, lambda: False)
    assert processes.running() == {} and _processes("c1", tmp_path / "processes") == []


def test_an_instance_says_the_restart_generation_it_was_started_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker killed after it restarted a container and before it reported that restarted
    it again once it ran again. An instance now says the generation it was started for
    (a process in its environment, a Docker container in a label), to a restarted worker
    too (services/converge.py)."""
    import json

    rt = ProcessRuntime(tmp_path / "processes")
    try:
        rt.start("c1", 3)
        assert rt.generation("c1") == 3
        assert ProcessRuntime(tmp_path / "processes").generation("c1") == 3  # a new worker
        rt.start("c1")
        assert rt.generation("c1") == 0
    finally:
        rt.stop("c1", grace_s=0.5)
    assert rt.generation("c1") is None
    state = _fake_engine(tmp_path, monkeypatch)
    n1 = DockerRuntime(node="n1")
    n1.start("c1", 2)
    assert n1.generation("c1") == 2 and DockerRuntime(node="n1").generation("c1") == 2
    assert n1.generation("c2") is None
    engine = json.loads(state.read_text())  # one made by an earlier version: no label
    engine["containers"]["crdt-ops-c9"] = {"labels": {"crdt-ops.container": "c9"}, "pid": 9}
    state.write_text(json.dumps(engine))
    assert n1.pid("c9") == 9 and n1.generation("c9") is None


def test_a_directory_that_takes_no_write_neither_multiplies_nor_keeps_instances(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime directory full (or remounted read-only after a disk error): a start ran
    its process and then failed to write its pid file; the error escaped unrecorded, and
    every reconcile started one more instance that nothing would find again. And the
    guard, rewriting a pid file the worker wrote without a start time before it stopped
    anything, failed the same way and stopped nothing, for good (a review's
    reproductions). A start that cannot be recorded is stopped again and fails; a pid file
    that cannot be written is kept in memory, and stops go on."""
    import errno

    from services import pids as pid_files

    rt = ProcessRuntime(tmp_path)
    pid = rt.start("c1")

    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pid_files, "record", full)
    with pytest.raises(RuntimeError_, match="cannot record the instance of c2"):
        rt.start("c2")
    assert _processes("c2", tmp_path) == [] and not (tmp_path / "c2.pid").exists()
    guard_s = ProcessRuntime(tmp_path)  # the guard's, after the worker died
    assert guard_s.adopt_strays() == {} and guard_s.running() == {"c1": pid}
    guard_s.stop_all(["c1"], grace_s=0.5)
    assert _processes("c1", tmp_path) == []


def test_an_instance_that_rewrites_its_process_title_is_found_by_its_start_time(
        tmp_path: Path) -> None:
    """A command that rewrites its process title (nginx, setproctitle) overwrites what
    ``/proc/<pid>/environ`` shows. Another runtime (the guard's after the worker died, a
    restarted worker's) read a pid file without a start time that way, took its process
    for another program's and removed the file: the guard stopped nothing, and a restarted
    worker started a second instance (a review's reproduction). The starting runtime now
    writes the start time in at its first lookup, and the others go by that."""
    title = tmp_path / "title.py"
    title.write_text(
        "import time\n"
        "f = open('/proc/self/stat').read().rsplit(')', 1)[1].split()\n"
        "start, end = int(f[47]), int(f[48])  # env_start, env_end: proc(5)\n"
        "with open('/proc/self/mem', 'r+b', buffering=0) as m:\n"
        "    m.seek(start)\n"
        "    m.write((b'myapp: master process' + bytes(end - start))[:end - start])\n"
        "time.sleep(1000000)\n")
    rt = ProcessRuntime(tmp_path / "rt", f"{sys.executable} {title}")
    pid = rt.start("c1")
    try:
        time.sleep(0.3)  # it rewrote its title
        assert b"CRDT_OPS" not in Path(f"/proc/{pid}/environ").read_bytes()
        assert rt.running() == {"c1": pid}  # its first lookup: the start time written in
        other = ProcessRuntime(tmp_path / "rt", f"{sys.executable} {title}")
        assert other.running() == {"c1": pid} and other.pid("c1") == pid
        other.stop_all(["c1"], grace_s=0.5)
        assert not alive(pid)
    finally:
        if alive(pid):
            rt.stop_all(["c1"], grace_s=0.5)
