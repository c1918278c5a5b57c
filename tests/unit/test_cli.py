"""The command line: its name is the one it was started as, its help is current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import main, program_name

CONSOLE_SCRIPT = Path(sys.executable).parent / "kiqstack"


@pytest.mark.parametrize(
    ("argv0", "name"),
    [
        ("/venv/bin/kiqstack", "kiqstack"),
        ("kiqstack", "kiqstack"),
        ("/src/app/__main__.py", "python -m app"),
        ("", "python -m app"),
    ],
)
def test_program_name(argv0: str, name: str) -> None:
    assert program_name(argv0) == name


@pytest.mark.parametrize(
    ("command", "usage"),
    [
        ([str(CONSOLE_SCRIPT)], "usage: kiqstack"),
        ([sys.executable, "-m", "app"], "usage: python -m app"),
    ],
    ids=["console-script", "module"],
)
def test_help_uses_the_name_it_was_started_as(command: list[str], usage: str) -> None:
    if not CONSOLE_SCRIPT.exists():
        pytest.skip("the kiqstack console script is not installed next to this Python")
    result = subprocess.run(
        [*command, "dlq", "replay", "--help"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith(f"{usage} dlq replay ")
    top = subprocess.run([*command, "--help"], capture_output=True, text=True, check=True)
    assert top.stdout.startswith(f"{usage} ")
    prog = usage.removeprefix("usage: ")
    assert f"  {prog} dlq list " in top.stdout  # the examples name it too
    if prog == "kiqstack":
        assert "python -m app" not in top.stdout


def test_help_describes_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"], prog="kiqstack")
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in ("server", "worker", "both", "dlq", "RUN_MODE", "exit status"):
        assert word in text


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["dlq", "list", "--help"], ["--limit", "body_error", "JSON"]),
        (["dlq", "replay", "--help"], ["SEQUENCE", "--all", "refused", "summary", "Exit status 1"]),
    ],
)
def test_dlq_help(argv: list[str], words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(argv, prog="kiqstack")
    text = capsys.readouterr().out
    assert text.startswith(f"usage: kiqstack {' '.join(argv[:2])} ")
    for word in words:
        assert word in text


def test_a_bad_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["sideways"], prog="kiqstack")
    assert exit_info.value.code == 2
    assert "usage: kiqstack" in capsys.readouterr().err
