"""Just enough of Terraform to check the lake's IAM: python-hcl2's parse of terraform/, the
locals substituted into the roles' statements, and IAM's own matching of actions to keys
(``*`` matches any characters, ``/`` included)."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any

import hcl2

from tests.support import REPO

TERRAFORM = REPO / "terraform"
BUCKET_ARN = "arn:aws:s3:::lake-bucket"
PREFIX = "kprobe"


def unquote(value: Any) -> Any:
    """python-hcl2 8 keeps string literals' quotes: '"x"' -> 'x' (recursively)."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if isinstance(value, list):
        return [unquote(v) for v in value]
    if isinstance(value, dict):
        return {unquote(k): unquote(v) for k, v in value.items() if k != "__is_block__"}
    return value


def parse() -> dict[str, list[Any]]:
    """Every block of every .tf file, by kind (resource, data, locals, variable, ...)."""
    merged: dict[str, list[Any]] = {}
    for path in sorted(TERRAFORM.glob("*.tf")):
        with path.open() as f:
            for kind, blocks in unquote(hcl2.load(f)).items():
                merged.setdefault(kind, []).extend(blocks)
    return merged


def blocks(tf: dict[str, list[Any]], kind: str, type_: str) -> dict[str, Any]:
    """name -> body of every ``kind "type_" "name"`` block."""
    return {name: body for block in tf.get(kind, []) for t, named in block.items()
            if t == type_ for name, body in named.items()}


def locals_(tf: dict[str, list[Any]]) -> dict[str, Any]:
    return {k: v for block in tf.get("locals", []) for k, v in block.items()}


def variable_default(tf: dict[str, list[Any]], name: str) -> Any:
    return next(b[name]["default"] for b in tf["variable"] if name in b)


def substitute(text: str, values: dict[str, str]) -> str:
    """Replace ${local.x} / ${aws_s3_bucket.lake.arn} / ${var.prefix} by concrete values."""
    def one(match: re.Match[str]) -> str:
        key = match[1]
        if key not in values:
            raise KeyError(f"no value for ${{{key}}} in {text!r}")
        return values[key]

    return re.sub(r"\$\{([A-Za-z0-9_.]+)\}", one, text)


def role_statements(agent_node_scoped: bool = False, api_analyzes_on_demand: bool = False
                    ) -> dict[str, list[dict[str, Any]]]:
    """role -> [{"actions": [...], "resources": [concrete ARN patterns]}], the allow-list
    (the reader's on-demand analysis statements when ``api_analyzes_on_demand``)."""
    tf = parse()
    loc = locals_(tf)
    values = {"aws_s3_bucket.lake.arn": BUCKET_ARN, "var.prefix": PREFIX}
    values["local.lake"] = substitute(loc["lake"], values)
    values["local.tables"] = substitute(loc["tables"], values)
    scoped = re.fullmatch(r"\$\{var\.agent_node_scoped \? \"(.*)\" : \"(.*)\"\}",
                          loc["agent_data"])
    assert scoped, loc["agent_data"]
    data = scoped[1] if agent_node_scoped else scoped[2]
    values["local.agent_data"] = substitute(data.replace("$${", "${{"), values
                                            ).replace("${{", "${")
    log_files = [substitute(p, values) for p in loc["log_files"]]
    out: dict[str, list[dict[str, Any]]] = {}
    for role, statements in loc["statements"].items():
        out[role] = []
        if role == "reader" and api_analyzes_on_demand:
            statements = [*statements, *loc["on_demand_analysis"]]
        for st in statements:
            resources = st["resources"]
            if resources == "${local.log_files}":
                resources = log_files
            out[role].append({"sid": st["sid"], "actions": st["actions"],
                              "resources": [substitute(r, values) for r in resources]})
    return out


def allowed(statements: list[dict[str, Any]], action: str, key: str,
            tags: dict[str, str] | None = None) -> bool:
    """Whether an allow statement grants ``action`` on object ``key`` of the bucket."""
    arn = f"{BUCKET_ARN}/{key}"
    for st in statements:
        if action not in st["actions"]:
            continue
        for pattern in st["resources"]:
            for tag, value in (tags or {}).items():
                pattern = pattern.replace(f"${{aws:PrincipalTag/{tag}}}", value)
            if "${" in pattern:
                continue  # an unresolved policy variable matches nothing
            if fnmatch.fnmatchcase(arn, pattern.replace("[", "[[]")):
                return True
    return False


def files() -> list[Path]:
    return sorted(TERRAFORM.glob("*.tf"))
