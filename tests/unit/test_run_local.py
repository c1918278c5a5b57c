"""``make run``'s choices: default ports when free, the env file other terminals source."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts import run_local
from scripts.localinfra import Server, free_port, port_is_free


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_listening_port_is_not_free(listening: int) -> None:
    assert not port_is_free(listening)
    assert port_is_free(free_port())


def test_the_default_port_when_it_is_free() -> None:
    default = free_port()
    assert run_local.choose_port(None, default) == default


def test_a_free_port_when_the_default_is_taken(listening: int) -> None:
    chosen = run_local.choose_port(None, listening)
    assert chosen != listening
    assert port_is_free(chosen)


def test_a_span_of_free_ports_when_one_of_the_defaults_is_taken(listening: int) -> None:
    chosen = run_local.choose_port(None, listening - 1, span=2)
    assert chosen != listening - 1
    assert port_is_free(chosen)
    assert port_is_free(chosen + 1)


def test_an_asked_for_port_is_used_as_is(listening: int) -> None:
    assert run_local.choose_port(listening, 4222) == listening
    assert run_local.choose_port(0, listening) != listening


def _server(name: str, port: int) -> Server:
    return Server(name, [], "127.0.0.1", port, Path(), Path())


def test_the_env_file_exports_the_urls(tmp_path: Path) -> None:
    path = tmp_path / ".kiqstack.env"
    text = run_local.write_env_file(path, _server("nats", 4333), _server("redis", 6444))
    exported = subprocess.run(
        ["bash", "-c", f"source {path} && echo $NATS_URL $REDIS_URL"],
        env={},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert exported == ["nats://127.0.0.1:4333", "redis://127.0.0.1:6444/0"]
    run_local.remove_env_file(path, text)
    assert not path.exists()


def test_an_env_file_written_by_another_run_is_kept(tmp_path: Path) -> None:
    path = tmp_path / ".kiqstack.env"
    ours = run_local.write_env_file(path, _server("nats", 4333), _server("redis", 6444))
    theirs = run_local.write_env_file(path, _server("nats", 4334), _server("redis", 6445))
    run_local.remove_env_file(path, ours)
    assert path.read_text() == theirs


def test_group_members_lists_live_processes_only() -> None:
    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        assert run_local.group_members(child.pid) == [child.pid]
    finally:
        child.kill()
        child.wait()
    assert run_local.group_members(child.pid) == []
    assert os.getpid() in run_local.group_members(os.getpgid(0))
