"""The worker's runtimes on their own: real processes, pid files, adoption, failures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.runtime import DockerRuntime, ProcessRuntime, RuntimeError_, alive


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
