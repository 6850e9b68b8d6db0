"""One top-level package: the project's modules import as ``kprobe.<package>`` everywhere
(the wheel installs nothing else into site-packages), while the packages stay at the
repository's top level, where ``kprobe/<package>`` links to."""

from __future__ import annotations

import ast
import re
import subprocess

from tests.support import REPO

PACKAGES = ("capture_agent", "lake", "compute", "query_api", "replay_sandbox")
# a module path written as a string: importlib, uvicorn's "module:app", python -m
_MODULE_STRING = re.compile(rf"^(-m )?({'|'.join(PACKAGES)})(\.\w+)+(:\w+)?$")
# an import in code run from a string (python -c, a worker's bootstrap)
_CODE_IMPORT = re.compile(rf"(?:^|;|\n)\s*(?:from|import) ((?:{'|'.join(PACKAGES)})\b[\w.]*)")


def _sources() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.split()
    this = "tests/unit/test_one_namespace.py"  # its controls name the old modules
    return [name for name in listed if (REPO / name).is_file() and name != this]


def _old_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names
                      if a.name.split(".")[0] in PACKAGES]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                node.module.split(".")[0] in PACKAGES):
            found.append((node.lineno, node.module))
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and _MODULE_STRING.match(node.value) and _is_module(node.value)):
            found.append((node.lineno, node.value))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found += [(node.lineno, m) for m in _CODE_IMPORT.findall(node.value)]
    return found


def _is_module(path: str) -> bool:
    """Whether a dotted string names one of the project's modules (not a key like lake.uri)."""
    parts = path.removeprefix("-m ").split(":")[0].split(".")
    where = REPO.joinpath(*parts)
    return where.with_suffix(".py").is_file() or (where / "__init__.py").is_file()


def test_every_import_names_the_kprobe_namespace() -> None:
    offenders = [f"{name}:{line}: {what}" for name in _sources()
                 for line, what in _old_imports(ast.parse((REPO / name).read_text(), name))]
    # (a module imported under both names would exist twice, with two LakeError classes)
    assert not offenders, "\n".join(offenders)


def test_the_check_finds_an_old_import() -> None:  # control
    tree = ast.parse("import lake\nfrom compute.window import x\nfrom kprobe.lake import y\n"
                     "uvicorn.run('query_api.app:create_app')\nkey = 'lake.uri'\n"
                     "boot = 'import sys; from query_api.cypher_worker import main'\n"
                     "prose = 'the lake from compute nodes'\n")
    assert sorted(what for _line, what in _old_imports(tree)) == [
        "compute.window", "lake", "query_api.app:create_app", "query_api.cypher_worker"]


def test_each_package_is_a_subpackage_of_kprobe() -> None:
    for package in PACKAGES:
        link = REPO / "kprobe" / package
        assert link.is_symlink() and str(link.readlink()) == f"../{package}", package
        assert (link / "__init__.py").is_file(), package
