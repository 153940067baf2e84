"""The layer contract, read from the source: imports point down the layers, only `cli` reads argv or the
environment, only the HTTP edge imports HTTP clients (servers may import aiohttp's web side). A new module must
be placed in a layer here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hfdistill"

# Bottom to top; a module may import modules of its own layer or of layers below it.
LAYERS: dict[str, tuple[str, ...]] = {
    "core": ("core",),
    "clients": ("edge", "teacher", "retrieval", "judge", "tools"),
    "run": ("run", "curation", "publish"),
    "front": ("engines", "commands", "cli", "__init__", "__main__"),
}
HTTP_CLIENTS = {"aiohttp", "httpx", "httpx2", "openai", "requests", "urllib3", "urllib.request"}
HTTP_EDGE = "edge.py"  # the one module that imports HTTP clients and translates their faults
HTTP_SERVERS = {"retrieval/server.py"}  # serve HTTP with aiohttp's web side, and import nothing of its client
# Programs of their own, started by path in a process of their own (standard library only): their argv is theirs.
PROGRAMS = {"teacher/serve/supervisor.py"}
SERVER_SIDE = "aiohttp.web"


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


# Parsed once, as the tests are collected: before any test has left garbage whose finalizers a collection could
# run inside `ast.parse` (CPython 3.11 then fails the parse with "AST constructor recursion depth mismatch").
_TREES = {path: ast.parse(path.read_text()) for path in _modules()}


def _unit(path: Path) -> str:
    """The name the contract places: a top-level module, or a subpackage as a whole."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _layer(unit: str) -> int:
    for rank, units in enumerate(LAYERS.values()):
        if unit in units:
            return rank
    raise AssertionError(f"hfdistill.{unit} is in no layer of tests/test_layers.py: place it")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(_TREES[path]):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names if node.module == "hfdistill"]
    return names


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_layers(path: Path) -> None:
    unit = _unit(path)
    for name in _imports(path):
        parts = name.split(".")
        if parts[0] != "hfdistill" or len(parts) < 2 or parts[1] == "__version__":  # the package's own metadata
            continue
        assert _layer(parts[1]) <= _layer(unit), f"hfdistill.{unit} imports {name}, a layer above it"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_cli_reads_argv_and_the_environment(path: Path) -> None:
    if _unit(path) == "cli" or str(path.relative_to(PACKAGE)) in PROGRAMS:
        return
    source = path.read_text()
    for read in ("os.environ", "os.getenv", "sys.argv"):
        assert read not in source, f"{path.name} reads {read}: only hfdistill.cli.main may"


def _http_imports(path: Path) -> list[str]:
    """Every name a module imports, `from m import x` as `m.x` (so `from aiohttp import web` is `aiohttp.web`)."""
    names = []
    for node in ast.walk(_TREES[path]):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_edge_imports_http_clients(path: Path) -> None:
    where = str(path.relative_to(PACKAGE))
    if where == HTTP_EDGE:
        return
    for name in _http_imports(path):
        if name == SERVER_SIDE or name.startswith(SERVER_SIDE + ".") or name.startswith(SERVER_SIDE + "_"):
            assert where in HTTP_SERVERS, f"{where} imports {name}: only the servers ({', '.join(HTTP_SERVERS)}) may"
            continue
        assert not any(name == c or name.startswith(c + ".") for c in HTTP_CLIENTS), \
            f"{where} imports {name}: HTTP clients belong in hfdistill/edge.py, which every client goes through"


def test_the_contract_sees_every_module() -> None:
    assert {_unit(p) for p in _modules()} <= {u for units in LAYERS.values() for u in units}
