"""Renders infra/helm/kprobe without a helm binary (none can be installed on these machines).

A small interpreter of the part of Go's text/template and Helm's functions the chart uses:
actions with whitespace trimming (``{{-``/``-}}``), comments, ``if``/``else if``/``else``,
``range`` (lists and maps, with ``$i, $v :=``), ``with``, ``define``/``include``, variables,
pipelines, and the functions in FUNCTIONS. A template outside that subset fails loudly
(``unknown function``, ``unexpected token``) rather than rendering something else, so the
chart stays inside what this renders the way Helm does. Values are checked against
values.schema.json first, as Helm does.

    python infra/helm/render.py infra/helm/kprobe [--set-file values.yaml] > out.yaml

prints what ``helm template RELEASE CHART --namespace NS`` prints: each non-empty document
of each template, with its ``# Source:`` line. ``make chart`` rewrites the committed
rendering of the default values (infra/helm/rendered/default.yaml); tests/infra/test_chart.py
fails when the two differ.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml


class TemplateError(Exception):
    pass


# -- lexing ---------------------------------------------------------------------------------

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<num>-?\d+(?:\.\d+)?)
  | (?P<assign>:=|=)
  | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)
  | (?P<field>(?:\.[A-Za-z0-9_]+)+|\.)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<pipe>\|)
  | (?P<lparen>\()
  | (?P<rparen>\)(?:\.[A-Za-z0-9_]+)*)
  | (?P<comma>,)
""", re.X)


def _tokens(src: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if not m:
            raise TemplateError(f"unexpected token at {src[pos:pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup
        assert kind is not None
        if kind != "ws":
            out.append((kind, m.group()))
    return out


# -- parsing --------------------------------------------------------------------------------

@dataclass
class Node:
    kind: str  # text, action, if, range, with, define
    text: str = ""
    tokens: list[tuple[str, str]] = field(default_factory=list)
    body: list[Node] = field(default_factory=list)
    orelse: list[Node] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # range/assignment variables


def _lex(src: str) -> Iterator[tuple[str, str]]:
    """('text', s) and ('action', inner) pieces, trimming whitespace as Go does."""
    pos = 0
    pieces: list[list[str]] = []
    for m in _ACTION.finditer(src):
        text = src[pos:m.start()]
        if m.group(1):
            text = text.rstrip()
        pieces.append(["text", text])
        pieces.append(["action", m.group(2).strip(), "trim_right" if m.group(3) else ""])
        pos = m.end()
    pieces.append(["text", src[pos:]])
    trim_next = False
    for piece in pieces:
        if piece[0] == "text":
            yield "text", piece[1].lstrip() if trim_next else piece[1]
            trim_next = False
        else:
            trim_next = piece[2] == "trim_right"
            if not piece[1].startswith("/*"):
                yield "action", piece[1]


def parse(src: str) -> tuple[list[Node], dict[str, list[Node]]]:
    """The template's nodes and the templates it defines."""
    defines: dict[str, list[Node]] = {}
    root: list[Node] = []
    stack: list[tuple[Node | None, list[Node]]] = [(None, root)]
    for kind, text in _lex(src):
        current = stack[-1][1]
        if kind == "text":
            if text:
                current.append(Node("text", text=text))
            continue
        toks = _tokens(text)
        head = toks[0][1] if toks and toks[0][0] == "ident" else ""
        if head in ("if", "with", "range"):
            node = Node(head)
            rest = toks[1:]
            if head == "range" and any(k == "assign" for k, _ in rest):
                i = next(i for i, (k, _) in enumerate(rest) if k == "assign")
                node.names = [v for k, v in rest[:i] if k == "var"]
                rest = rest[i + 1:]
            node.tokens = rest
            current.append(node)
            stack.append((node, node.body))
        elif head == "define":
            name = json.loads(toks[1][1])
            node = Node("define", text=name)
            defines[name] = node.body
            stack.append((node, node.body))
        elif head == "else":
            owner = stack[-1][0]
            if owner is None:
                raise TemplateError("else outside if/range/with")
            stack.pop()
            if len(toks) > 1:  # else if ...
                if toks[1][1] != "if":
                    raise TemplateError(f"unsupported else {text!r}")
                inner = Node("if", tokens=toks[2:])
                owner.orelse.append(inner)
                stack.append((owner, owner.orelse))  # closed by the same end as inner
                inner.names = ["__chained__"]
                stack.append((inner, inner.body))
            else:
                stack.append((owner, owner.orelse))
        elif head == "end":
            owner, _ = stack.pop()
            while owner is not None and owner.names == ["__chained__"]:
                owner.names = []
                owner, _ = stack.pop()
            if owner is None:
                raise TemplateError("end without a block")
        else:
            node = Node("action", tokens=toks)
            if len(toks) > 2 and toks[0][0] == "var" and toks[1][0] == "assign":
                node.names = [toks[0][1]]
                node.tokens = toks[2:]
            current.append(node)
    if len(stack) != 1:
        raise TemplateError("unclosed block")
    return root, defines


# -- evaluation -----------------------------------------------------------------------------

def truthy(value: Any) -> bool:
    return not (value is None or value is False or value == 0 or value == "" or
                (isinstance(value, list | dict) and not value))


def go_str(value: Any) -> str:
    """fmt's %v of a value, as Helm prints it (nil: empty)."""
    if value is None:
        return ""
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list | dict):
        raise TemplateError(f"printing a {type(value).__name__} (use toYaml/toJson)")
    return str(value)


def to_yaml(value: Any) -> str:
    if value is None:
        return "null"
    text: str = yaml.safe_dump(value, default_flow_style=False, sort_keys=True, width=10_000)
    return text.rstrip("\n")


def _indent(n: int, s: str) -> str:
    pad = " " * int(n)
    return "\n".join(pad + line for line in str(s).split("\n"))


def _required(message: str, value: Any) -> Any:
    if not truthy(value) and value is not False:
        raise TemplateError(message)
    return value


def _fail(message: str) -> Any:
    raise TemplateError(message)


def _printf(fmt: str, *args: Any) -> str:
    return re.sub(r"%[vsd]", lambda _m: "{}", fmt).format(*(go_str(a) for a in args))


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "toYaml": to_yaml,
    "toJson": lambda v: json.dumps(v, sort_keys=True, separators=(",", ":")),
    "indent": _indent,
    "nindent": lambda n, s: "\n" + _indent(n, s),
    "quote": lambda *v: " ".join(json.dumps(go_str(x)) for x in v),
    "squote": lambda v: f"'{go_str(v)}'",
    "default": lambda d, v=None: v if truthy(v) else d,
    "required": _required,
    "fail": _fail,
    "printf": _printf,
    "eq": lambda a, *b: any(a == x for x in b),
    "ne": lambda a, b: a != b,
    "not": lambda v: not truthy(v),
    "and": lambda *v: next((x for x in v if not truthy(x)), v[-1]),
    "or": lambda *v: next((x for x in v if truthy(x)), v[-1]),
    "empty": lambda v: not truthy(v),
    "list": lambda *v: list(v),
    "dict": lambda *kv: {kv[i]: kv[i + 1] for i in range(0, len(kv), 2)},
    "index": lambda v, *keys: _index(v, keys),
    "hasKey": lambda d, k: k in d,
    "trunc": lambda n, s: s[:n],
    "trimSuffix": lambda suf, s: s[:-len(suf)] if suf and s.endswith(suf) else s,
    "b64enc": lambda s: base64.b64encode(go_str(s).encode()).decode(),
    "toString": go_str,
    "int": lambda v: int(v),
    "join": lambda sep, v: sep.join(go_str(x) for x in v),
}


def _index(value: Any, keys: tuple[Any, ...]) -> Any:
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else value[key]
    return value


def _field(value: Any, path: str) -> Any:
    for name in [p for p in path.split(".") if p]:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise TemplateError(f"can't evaluate field {name} in {type(value).__name__}")
        value = value.get(name)
    return value


class Renderer:
    def __init__(self, defines: dict[str, list[Node]]) -> None:
        self.defines = defines

    def include(self, name: str, dot: Any) -> str:
        if name not in self.defines:
            raise TemplateError(f"no template {name!r}")
        return self.render(self.defines[name], dot, {"$": dot})

    def render(self, nodes: list[Node], dot: Any, scope: dict[str, Any]) -> str:
        out: list[str] = []
        for node in nodes:
            if node.kind == "text":
                out.append(node.text)
            elif node.kind == "action":
                value = self.pipeline(node.tokens, dot, scope)
                if node.names:
                    scope[node.names[0]] = value
                else:
                    out.append(go_str(value))
            elif node.kind == "if":
                chosen = node.body if truthy(self.pipeline(node.tokens, dot, scope)) else None
                out.append(self.render(chosen, dot, dict(scope)) if chosen is not None
                           else self.render(node.orelse, dot, dict(scope)))
            elif node.kind == "with":
                value = self.pipeline(node.tokens, dot, scope)
                out.append(self.render(node.body, value, dict(scope)) if truthy(value)
                           else self.render(node.orelse, dot, dict(scope)))
            elif node.kind == "range":
                value = self.pipeline(node.tokens, dot, scope)
                items = (sorted(value.items()) if isinstance(value, dict)
                         else list(enumerate(value or [])))
                if not items:
                    out.append(self.render(node.orelse, dot, dict(scope)))
                for key, item in items:
                    inner = dict(scope)
                    if len(node.names) == 2:
                        inner[node.names[0]], inner[node.names[1]] = key, item
                    elif len(node.names) == 1:
                        inner[node.names[0]] = item
                    out.append(self.render(node.body, item, inner))
        return "".join(out)

    def pipeline(self, toks: list[tuple[str, str]], dot: Any, scope: dict[str, Any]) -> Any:
        commands: list[list[tuple[str, str]]] = [[]]
        depth = 0
        for tok in toks:
            if tok[0] == "pipe" and depth == 0:
                commands.append([])
                continue
            depth += tok[0] == "lparen"
            depth -= tok[0] == "rparen"
            commands[-1].append(tok)
        value: Any = None
        for i, command in enumerate(commands):
            value = self.command(command, dot, scope, piped=(value,) if i else ())
        return value

    def command(self, toks: list[tuple[str, str]], dot: Any, scope: dict[str, Any],
                piped: tuple[Any, ...]) -> Any:
        if not toks:
            raise TemplateError("empty command")
        args: list[Any] = []
        i = 1 if toks[0][0] == "ident" and toks[0][1] not in ("true", "false", "nil") else 0
        while i < len(toks):
            value, i = self.operand(toks, i, dot, scope)
            args.append(value)
        if toks[0][0] == "ident" and toks[0][1] not in ("true", "false", "nil"):
            name = toks[0][1]
            if name == "include":
                return self.include(*args, *piped)
            if name not in FUNCTIONS:
                raise TemplateError(f"unknown function {name!r}")
            return FUNCTIONS[name](*args, *piped)
        if len(args) != 1 or piped:
            raise TemplateError(f"can't call a non-function: {toks}")
        return args[0]

    def operand(self, toks: list[tuple[str, str]], i: int, dot: Any,
                scope: dict[str, Any]) -> tuple[Any, int]:
        kind, text = toks[i]
        if kind == "str":
            return json.loads(text), i + 1
        if kind == "raw":
            return text[1:-1], i + 1
        if kind == "num":
            return (float(text) if "." in text else int(text)), i + 1
        if kind == "ident" and text in ("true", "false", "nil"):
            return {"true": True, "false": False, "nil": None}[text], i + 1
        if kind == "field":
            return (dot if text == "." else _field(dot, text)), i + 1
        if kind == "var":
            name, _, path = text.partition(".")
            if name not in scope:
                raise TemplateError(f"undefined variable {name}")
            return _field(scope[name], path), i + 1
        if kind == "lparen":
            depth, j = 1, i + 1
            while depth:
                depth += toks[j][0] == "lparen"
                depth -= toks[j][0] == "rparen"
                j += 1
            value = self.pipeline(toks[i + 1:j - 1], dot, scope)
            return _field(value, toks[j - 1][1][1:]), j
        if kind == "ident":  # a function with no arguments inside a pipeline's operands
            return self.command([toks[i]], dot, scope, ()), i + 1
        raise TemplateError(f"unexpected token {text!r}")


# -- the chart ------------------------------------------------------------------------------

def merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for k, v in override.items():
            out[k] = merge(base.get(k), v) if k in base else v
        return out
    return override


def render_chart(chart: Path, release: str = "kprobe", namespace: str = "kprobe",
                 overrides: dict[str, Any] | None = None) -> str:
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    values = merge(yaml.safe_load((chart / "values.yaml").read_text()) or {}, overrides or {})
    schema_file = chart / "values.schema.json"
    if schema_file.exists():
        try:
            jsonschema.validate(values, json.loads(schema_file.read_text()))
        except jsonschema.ValidationError as err:
            where = ".".join(str(p) for p in err.absolute_path) or "(root)"
            raise TemplateError(f"values don't meet the chart's schema: {where}: {err.message}"
                                ) from None
    dot = {
        "Values": values,
        "Release": {"Name": release, "Namespace": namespace, "Service": "Helm",
                    "IsInstall": True, "IsUpgrade": False, "Revision": 1},
        "Chart": {"Name": meta["name"], "Version": meta["version"],
                  "AppVersion": meta.get("appVersion", "")},
    }
    templates = sorted(p for p in (chart / "templates").iterdir() if p.is_file())
    defines: dict[str, list[Node]] = {}
    parsed: list[tuple[Path, list[Node]]] = []
    for path in templates:
        try:
            nodes, defs = parse(path.read_text())
        except TemplateError as err:
            raise TemplateError(f"{path.name}: {err}") from None
        defines.update(defs)
        if not path.name.startswith("_") and path.suffix in (".yaml", ".yml"):
            parsed.append((path, nodes))
    renderer = Renderer(defines)
    out: list[str] = []
    for path, nodes in parsed:
        try:
            text = renderer.render(nodes, dot, {"$": dot})
        except (TemplateError, TypeError, KeyError, IndexError) as err:
            raise TemplateError(f"{path.name}: {err}") from None
        for doc in re.split(r"(?m)^---[ \t]*$", text):
            try:
                parsed_doc = yaml.safe_load(doc)
            except yaml.YAMLError as err:
                raise TemplateError(f"{path.name} renders invalid YAML: {err}") from None
            if parsed_doc is None:
                continue  # empty documents (comments only) are dropped, as Helm does
            body = doc.strip("\n")
            out.append(f"---\n# Source: {meta['name']}/templates/{path.name}\n{body}\n")
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("chart", type=Path)
    parser.add_argument("--release", default="kprobe")
    parser.add_argument("--namespace", default="kprobe")
    parser.add_argument("-f", "--values", type=Path, action="append", default=[])
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    for path in args.values:
        overrides = merge(overrides, yaml.safe_load(path.read_text()) or {})
    try:
        sys.stdout.write(render_chart(args.chart, args.release, args.namespace, overrides))
    except TemplateError as err:
        print(f"render: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
