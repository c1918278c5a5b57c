"""``config.*`` values that name an app setting carry the app's bounds and reach it intact.

A property of values.schema.json whose ``description`` is the environment variable of a
:class:`app.config.Settings` field must have that field's type and bounds: the chart then refuses
what the app would refuse at startup (a crash-looping pod instead of a clear ``helm`` error) and
accepts everything the app accepts. Rendered at those bounds, the ConfigMap must hold plain decimal
strings that the app reads back as the same numbers (Helm 3.17+/4 keep the numbers of values as
float64 and print 1000000 and more as "1e+06" unless the template converts them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helm_python
import pytest

from app.config import Settings, load_settings
from app.errors import ConfigError
from tests.chart.chartlib import CHART_DIR, Rendered, render, validate_schema

pytestmark = pytest.mark.chart

# The settings the chart maps with the API edge (docs/contract.md); each must be found below.
API_EDGE = {
    "IDEMPOTENCY_TTL_SECONDS",
    "HTTP_HEADER_TIMEOUT_SECONDS",
    "HTTP_BODY_TIMEOUT_SECONDS",
    "HTTP_KEEPALIVE_TIMEOUT_SECONDS",
    "HTTP_LIMIT_CONCURRENCY",
    "HTTP_MAX_CONNECTIONS",
    "HTTP_MAX_HEADER_BYTES",
    "HTTP_MAX_HEADERS",
    "HTTP_BACKLOG",
}
_BOUNDS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}
_TYPES = {int: "integer", float: "number"}


_Mapped = dict[str, tuple[tuple[str, ...], Any]]


def _mapped(schema: dict[str, Any], path: tuple[str, ...]) -> _Mapped:
    """Environment variable -> (values path, schema) of every property that names a setting."""
    found: _Mapped = {}
    for key, prop in schema.get("properties", {}).items():
        here = (*path, key)
        if str(prop.get("description", "")).lower() in Settings.model_fields:
            found[prop["description"]] = (here, prop)
        found.update(_mapped(prop, here))
    return found


MAPPED = _mapped(json.loads((CHART_DIR / "values.schema.json").read_text()), ())


def _app_bounds(env: str) -> dict[str, Any]:
    field = Settings.model_fields[env.lower()]
    bounds: dict[str, Any] = {"type": _TYPES[field.annotation]}  # type: ignore[index]
    for constraint in field.metadata:
        for attr, keyword in _BOUNDS.items():
            if getattr(constraint, attr, None) is not None:
                bounds[keyword] = getattr(constraint, attr)
    return bounds


def _values(settings: dict[str, Any]) -> dict[str, Any]:
    """Chart values that set each environment variable of ``settings`` to its value."""
    values: dict[str, Any] = {}
    for env, value in settings.items():
        path = MAPPED[env][0]
        node = values
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return values


def _at(keyword: str) -> dict[str, Any]:
    return {env: prop[keyword] for env, (_, prop) in MAPPED.items() if keyword in prop}


def test_api_edge_settings_are_mapped() -> None:
    assert set(MAPPED) >= API_EDGE
    http = {env: path[:2] for env, (path, _) in MAPPED.items() if env.startswith("HTTP_")}
    assert http == dict.fromkeys(API_EDGE - {"IDEMPOTENCY_TTL_SECONDS"}, ("config", "http"))
    assert MAPPED["IDEMPOTENCY_TTL_SECONDS"][0] == ("config", "idempotencyTtlSeconds")


@pytest.mark.parametrize("env", sorted(MAPPED))
def test_schema_has_the_app_type_and_bounds(env: str) -> None:
    prop = MAPPED[env][1]
    schema = {k: prop[k] for k in ("type", *_BOUNDS.values()) if k in prop}
    assert schema == _app_bounds(env)


@pytest.mark.parametrize("env", sorted(API_EDGE))
def test_chart_defaults_are_the_app_defaults(defaults: Rendered, env: str) -> None:
    data = defaults.get("ConfigMap", "demo-kiqstack")["data"]
    assert data[env] == str(Settings.model_fields[env.lower()].default)


def _loaded(data: dict[str, str], names: set[str]) -> Settings:
    return load_settings(**{name.lower(): data[name] for name in names})


@pytest.mark.parametrize("keyword", ["minimum", "maximum"])
def test_values_at_the_bounds_reach_the_app(chart: Path, keyword: str) -> None:
    settings = _at(keyword)
    assert API_EDGE & set(settings)
    data = render(chart, _values(settings)).get("ConfigMap", "demo-kiqstack")["data"]
    for env, value in settings.items():
        assert data[env] == str(value), f"{env}: {value} rendered as {data[env]!r}"
    loaded = _loaded(data, set(settings))
    assert {env: getattr(loaded, env.lower()) for env in settings} == settings


def test_large_and_fractional_values_render_as_decimals(chart: Path) -> None:
    settings = {
        "IDEMPOTENCY_TTL_SECONDS": 2_592_000,
        "HTTP_MAX_HEADER_BYTES": 1_048_576,
        "HTTP_MAX_CONNECTIONS": 100_000,
        "HTTP_HEADER_TIMEOUT_SECONDS": 0.5,
        "HTTP_BODY_TIMEOUT_SECONDS": 12.25,
    }
    data = render(chart, _values(settings)).get("ConfigMap", "demo-kiqstack")["data"]
    assert {env: data[env] for env in settings} == {
        "IDEMPOTENCY_TTL_SECONDS": "2592000",
        "HTTP_MAX_HEADER_BYTES": "1048576",
        "HTTP_MAX_CONNECTIONS": "100000",
        "HTTP_HEADER_TIMEOUT_SECONDS": "0.5",
        "HTTP_BODY_TIMEOUT_SECONDS": "12.25",
    }
    loaded = _loaded(data, set(settings))
    assert {env: getattr(loaded, env.lower()) for env in settings} == settings


def _beyond(env: str, keyword: str) -> int | float:
    prop = MAPPED[env][1]
    step = 1 if prop["type"] == "integer" else 0.5
    return {
        "minimum": prop["minimum"] - step if "minimum" in prop else None,
        "exclusiveMinimum": prop.get("exclusiveMinimum"),
        "maximum": prop["maximum"] + step if "maximum" in prop else None,
    }[keyword]


_OUTSIDE = [
    (env, keyword)
    for env, (_, prop) in sorted(MAPPED.items())
    for keyword in ("minimum", "exclusiveMinimum", "maximum")
    if keyword in prop
]


@pytest.mark.parametrize(("env", "keyword"), _OUTSIDE, ids=[f"{e}-{k}" for e, k in _OUTSIDE])
def test_values_beyond_the_bounds_are_refused_by_chart_and_app(
    chart: Path, env: str, keyword: str
) -> None:
    value = _beyond(env, keyword)
    path = "/" + "/".join(MAPPED[env][0])
    with pytest.raises(helm_python.HelmValuesError, match=f"at '{path}'"):
        validate_schema(chart, _values({env: value}))
    with pytest.raises(ConfigError, match=env):
        load_settings(**{env.lower(): str(value)})


def test_unknown_http_key_is_refused(chart: Path) -> None:
    with pytest.raises(helm_python.HelmValuesError, match="additional properties 'timeout'"):
        validate_schema(chart, {"config": {"http": {"timeout": 5}}})
