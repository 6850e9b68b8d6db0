"""Writes the generated pages of the docs site (run by ``make docs`` before mkdocs).

- ``reference/cli.md``: every ``kprobe`` command, its options and help, from the argparse
  parser the command itself uses (``kprobe.cli.build_parser``);
- ``reference/api.md``: every HTTP route of ``kprobe serve`` with its parameters, bodies and
  answers, from the OpenAPI document the app serves (``query_api.app.create_app``);
- ``reference/settings.md``: every environment variable, from the settings classes;
- ``architecture.md``: ARCHITECTURE.md as it is in the repository.

The generated files are not committed (``.gitignore``), so the site cannot drift from the
code: it is built from it.

    .venv/bin/python docs/_gen/generate.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
sys.path.insert(0, str(REPO))


def _md(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ").strip()


def cli_reference() -> str:
    from kprobe.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    lines = ["# CLI reference", "",
             "Generated from the `kprobe` command's own argument parser. Every command takes "
             "`--help`; errors are one line on stderr with exit code 2 (bad input or "
             "environment), 1 (a check failed), 70 (a bug) or 130 (interrupted).", "",
             "| command | what it does |", "|---|---|"]
    helps = {a.dest: a.help for a in sub._choices_actions}
    for name in sub.choices:
        lines.append(f"| [`kprobe {name}`](#kprobe-{name}) | {_md(helps.get(name))} |")
    for name, command in sub.choices.items():
        lines += ["", f"## kprobe {name}", "", _md(command.description or helps.get(name)),
                  "", "```", command.format_usage().strip().removeprefix("usage: "), "```"]
        for group in command._action_groups:
            actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
            if not actions:
                continue
            title = group.title if group.title not in ("options", "optional arguments") \
                else "Options"
            lines += ["", f"**{title[0].upper() + title[1:]}**", ""]
            if group.description:
                lines += [_md(group.description), ""]
            lines += ["| option | meaning | default |", "|---|---|---|"]
            for action in actions:
                flags = ", ".join(f"`{f}`" for f in action.option_strings) or \
                    f"`{action.metavar or action.dest}`"
                if action.metavar and action.option_strings:
                    flags += f" `{action.metavar}`"
                elif action.choices and action.option_strings:
                    flags += " `{" + ",".join(map(str, action.choices)) + "}`"
                default = action.default
                shown = "" if default in (None, False, [], "", argparse.SUPPRESS) \
                    else f"`{default}`"
                lines.append(f"| {flags} | {_md(action.help)} | {shown} |")
    return "\n".join(lines) + "\n"


def _schema_name(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " or ".join(_schema_name(s) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"array of {_schema_name(schema.get('items', {}))}"
    return str(schema.get("type", "object"))


def api_reference() -> str:
    from kprobe.query_api.app import create_app

    spec = create_app().openapi()
    lines = ["# HTTP API reference", "",
             f"Generated from the OpenAPI {spec.get('openapi')} document of `kprobe serve` "
             f"({spec['info']['title']}); the server also serves it at `/openapi.json` and "
             "an interactive page at `/docs`. Every route under `/v1` needs a bearer token "
             "with the scope named (see [Security](../security.md)); errors are "
             "`application/problem+json`.", ""]
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            lines += [f"## `{method.upper()} {path}`", "", _md(op.get("summary")), ""]
            if op.get("description"):
                lines += [op["description"].strip(), ""]
            params = op.get("parameters") or []
            if params:
                lines += ["| parameter | in | type | required | meaning |",
                          "|---|---|---|---|---|"]
                for p in params:
                    lines.append(f"| `{p['name']}` | {p['in']} | "
                                 f"{_md(_schema_name(p.get('schema', {})))} | "
                                 f"{'yes' if p.get('required') else ''} | "
                                 f"{_md(p.get('description'))} |")
                lines.append("")
            body = (op.get("requestBody") or {}).get("content", {})
            for media, content in body.items():
                lines += [f"Body: `{media}`, {_md(_schema_name(content.get('schema', {})))}",
                          ""]
            answers = op.get("responses") or {}
            if answers:
                lines += ["| status | meaning |", "|---|---|"]
                for status, answer in answers.items():
                    lines.append(f"| {status} | {_md(answer.get('description'))} |")
                lines.append("")
    schemas = spec.get("components", {}).get("schemas", {})
    if schemas:
        lines += ["## Schemas", ""]
        for name, schema in schemas.items():
            lines += [f"### {name}", "", _md(schema.get("description")), ""]
            props = schema.get("properties") or {}
            if props:
                lines += ["| field | type | meaning |", "|---|---|---|"]
                for field, prop in props.items():
                    lines.append(f"| `{field}` | {_md(_schema_name(prop))} | "
                                 f"{_md(prop.get('description') or prop.get('title'))} |")
                lines.append("")
    return "\n".join(lines) + "\n"


def settings_reference() -> str:
    from kprobe.compute.settings import ComputeSettings
    from kprobe.lake.storage import LakeSettings
    from kprobe.query_api.settings import ApiSettings

    lines = ["# Settings reference", "",
             "Generated from the settings classes. Every setting is an environment variable "
             "(a command-line option, where there is one, takes precedence).", ""]
    for title, cls in (("Lake and storage (every command)", LakeSettings),
                       ("Causal engine (`kprobe analyze`, `explain`, `graph`, the API)",
                        ComputeSettings),
                       ("Query API (`kprobe serve`)", ApiSettings)):
        prefix = cls.model_config.get("env_prefix", "")
        lines += [f"## {title}", "", "| variable | type | default |", "|---|---|---|"]
        for name, field in cls.model_fields.items():
            default = field.default
            shown = "" if default is None else f"`{default}`"
            if field.default_factory is not None:
                shown = "computed at start"
            if isinstance(default, Path) and str(default).startswith(str(Path.home())):
                shown = f"`~/{default.relative_to(Path.home())}`"
            kind = getattr(field.annotation, "__name__", None) or str(field.annotation)
            lines.append(f"| `{prefix}{name.upper()}` | {_md(kind.replace('typing.', ''))} "
                         f"| {_md(shown)} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    (DOCS / "reference").mkdir(exist_ok=True)
    pages = {"reference/cli.md": cli_reference(), "reference/api.md": api_reference(),
             "reference/settings.md": settings_reference(),
             "architecture.md": (REPO / "ARCHITECTURE.md").read_text()}
    for name, text in pages.items():
        (DOCS / name).write_text(text)
    print(json.dumps({"generated": sorted(pages)}))


if __name__ == "__main__":
    main()
