"""The README's settings table documents every setting with its real default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def _table() -> dict[str, str]:
    rows = {}
    for line in README.read_text().splitlines():
        match = re.match(r"^\| `([A-Z_]+)` \| (.+?) \|", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def _shown(value: object) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(getattr(value, "value", value))


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_documented_with_its_default(name: str) -> None:
    rows = _table()
    env = name.upper()
    assert env in rows, f"{env} is missing from the README settings table"
    default = Settings.model_fields[name].default
    if default is None:
        assert rows[env] == "unset"
    else:
        assert rows[env] == f"`{_shown(default)}`"
