"""Generate chart/README.md from chart/README.md.gotmpl and the ``# --`` comments of values.yaml.

A small stand-in for helm-docs (not installable here) that understands the same comment grammar:
``# --`` starts the description of the key below it (continued by following ``#`` lines),
``# @default --`` replaces the rendered default, ``##`` lines are section notes and stay out of
the table. The template may use ``{{ template "chart.valuesTable" . }}`` and
``{{ template "chart.<name|version|appVersion|kubeVersion|description>" . }}``.

Usage: ``python scripts/chart_docs.py [--chart chart] [--check]``; ``--check`` exits 1 when
README.md is out of date or a value has no description.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

KEY_RE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-/\"']+)\s*:(?P<rest>.*)$")
TEMPLATE_RE = re.compile(r"\{\{\s*template\s+\"chart\.(?P<name>[A-Za-z]+)\"\s+\.\s*\}\}")


@dataclass
class Doc:
    """The documentation of one values key."""

    path: str
    description: str
    default: str | None


def parse_comments(text: str) -> list[Doc]:
    """Return the documented keys of a values file, in file order."""
    docs: list[Doc] = []
    stack: list[tuple[int, str]] = []  # (indent, key)
    pending: list[str] | None = None
    pending_default: str | None = None
    skip_deeper_than: int | None = None  # inside a list or block scalar
    for raw in text.splitlines():
        stripped = raw.strip()
        indent = len(raw) - len(raw.lstrip(" "))
        if stripped.startswith("#"):
            if stripped.startswith("##"):
                continue
            body = stripped.lstrip("#").strip()
            if body.startswith("@default --"):
                pending_default = body.removeprefix("@default --").strip()
            elif body.startswith("--"):
                pending = [body.removeprefix("--").strip()]
            elif pending is not None and pending_default is None:
                pending.append(body)
            continue
        if not stripped:
            continue
        if skip_deeper_than is not None:
            if indent > skip_deeper_than or (
                indent == skip_deeper_than and stripped.startswith("- ")
            ):
                continue
            skip_deeper_than = None
        if stripped.startswith("- "):
            # list items (and everything nested in them) are values, not keys
            skip_deeper_than = indent
            pending, pending_default = None, None
            continue
        match = KEY_RE.match(raw)
        if not match:
            continue
        key = match["key"].strip("\"'")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        path = ".".join(k for _, k in stack)
        if pending is not None:
            docs.append(Doc(path, " ".join(p for p in pending if p), pending_default))
        pending, pending_default = None, None
        rest = match["rest"].strip()
        if rest.startswith(("|", ">")):
            skip_deeper_than = indent
    return docs


def lookup(values: dict[str, Any], path: str) -> Any:
    """Return the value at a dotted path."""
    node: Any = values
    for part in path.split("."):
        node = node[part]
    return node


def type_name(value: Any) -> str:
    """helm-docs style type of a value."""
    if value is None:
        return "string"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def leaf_paths(node: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every leaf (scalars, lists and empty maps)."""
    if isinstance(node, dict) and node:
        out: list[str] = []
        for key, value in node.items():
            out.extend(leaf_paths(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return [prefix]


def undocumented(values: dict[str, Any], docs: list[Doc]) -> list[str]:
    """Leaves whose key and ancestors all lack a ``# --`` description."""
    documented = {d.path for d in docs}
    missing = []
    for leaf in leaf_paths(values):
        parts = leaf.split(".")
        if not any(".".join(parts[:i]) in documented for i in range(1, len(parts) + 1)):
            missing.append(leaf)
    return missing


def escape(text: str) -> str:
    """Make text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def values_table(values: dict[str, Any], docs: list[Doc]) -> str:
    """Render the Markdown values table."""
    rows = ["| Key | Type | Default | Description |", "|-----|------|---------|-------------|"]
    for doc in docs:
        value = lookup(values, doc.path)
        if doc.default is not None:
            default = doc.default
        else:
            default = "`" + json.dumps(value, separators=(",", ":")) + "`"
        rows.append(
            f"| {doc.path} | {type_name(value)} | {escape(default)} | {escape(doc.description)} |"
        )
    return "\n".join(rows)


def generate(chart: Path) -> tuple[str, list[str]]:
    """Return the README text and the undocumented leaves."""
    values_text = (chart / "values.yaml").read_text()
    values = yaml.safe_load(values_text)
    docs = parse_comments(values_text)
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    fields = {
        "valuesTable": values_table(values, docs),
        "name": meta["name"],
        "version": meta["version"],
        "appVersion": str(meta.get("appVersion", "")),
        "kubeVersion": meta.get("kubeVersion", ""),
        "description": " ".join(str(meta.get("description", "")).split()),
    }
    template = (chart / "README.md.gotmpl").read_text()

    def substitute(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in fields:
            raise SystemExit(f"README.md.gotmpl: unknown template chart.{name}")
        return fields[name]

    readme = TEMPLATE_RE.sub(substitute, template)
    return readme.rstrip("\n") + "\n", undocumented(values, docs)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chart", type=Path, default=Path(__file__).resolve().parents[1] / "chart")
    parser.add_argument("--check", action="store_true", help="fail when README.md is stale")
    args = parser.parse_args(argv)
    readme, missing = generate(args.chart)
    if missing:
        print("values without a '# --' description: " + ", ".join(missing), file=sys.stderr)
        return 1
    target = args.chart / "README.md"
    if args.check:
        if not target.exists() or target.read_text() != readme:
            print(f"{target} is out of date: run `make chart-docs`", file=sys.stderr)
            return 1
        return 0
    target.write_text(readme)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
