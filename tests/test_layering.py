"""The package's layers, checked on its import graph (every import, module level and inside
functions; ``if TYPE_CHECKING:`` blocks excepted), as ``docs/architecture.md`` draws them."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "cosmic_horizons_lab"
P = "cosmic_horizons_lab"

#: layer -> the layers of this package it may import (itself always).
ALLOWED = {
    "_version": set(),
    "data": set(),
    "protocol": {"_version"},
    "science": {"protocol", "data"},
    "executor": {"protocol", "data", "science"},
    "backends": {"protocol"},
    "server": {"protocol", "data", "backends", "_version"},
    "notebook": {"protocol", "_version"},
    "": {"_version", "notebook", "server"},  # the package root: lazy entry points only
}
#: Single modules of a layer another layer may import beyond ALLOWED, and why.
EXCEPTIONS = {
    # the agents' specs (name, JSON Schema of params, extra needed): their modules import
    # their science only inside run(), which test_server_starts_without_the_science checks
    ("server", f"{P}.executor.registry"),
}
#: third-party modules a layer must never import (the server runs without the science extra).
FORBIDDEN_THIRD_PARTY = {
    "protocol": None,  # standard library only: checked separately
    "server": {"numpy", "torch", "scipy", "pyuvdata", "astropy", "matplotlib", "casacore"},
    "backends": {"numpy", "torch", "scipy", "pyuvdata", "astropy", "matplotlib"},
    "notebook": {"torch", "pyuvdata"},
}


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def _imports(path: Path, mod: str, is_pkg: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    base = mod if is_pkg else mod.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base.split(".")[: len(base.split(".")) - (node.level - 1)]
                target = ".".join(parent + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names if target == P)
    return found


def _layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_layers_import_only_what_they_may():
    import sys

    stdlib = set(sys.stdlib_module_names)
    modules = _modules()
    problems = []
    for mod, (path, is_pkg) in sorted(modules.items()):
        layer = _layer(mod)
        allowed = ALLOWED[layer] | {layer}
        for name in _imports(path, mod, is_pkg):
            top = name.split(".")[0]
            if top == P:
                target = _layer(name)
                if target and target not in allowed and (layer, name) not in EXCEPTIONS:
                    problems.append(f"{mod} imports {name} ({layer or 'root'} -> {target})")
            elif layer == "protocol" and top not in stdlib and top != "__future__":
                problems.append(f"{mod} imports {name}: protocol is standard library only")
            elif top in (FORBIDDEN_THIRD_PARTY.get(layer) or ()):
                problems.append(f"{mod} imports {name}, which {layer} must not need")
    assert not problems, "\n".join(problems)


def test_no_import_cycle():
    modules = _modules()
    graph = {}
    for mod, (path, is_pkg) in modules.items():
        edges = set()
        for name in _imports(path, mod, is_pkg):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != mod:
                edges.add(name)
        graph[mod] = edges
    # Tarjan's strongly connected components: any component of two or more is a cycle
    index, low, stack, on, comps = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not comps, comps


def test_the_layer_rule_is_not_vacuous():
    """The checker sees the imports it is meant to judge (a canary for a broken parser)."""
    modules = _modules()
    path, is_pkg = modules[f"{P}.executor.agents.reconstruction"]
    assert any(n.startswith(f"{P}.science") for n in _imports(path, f"{P}.executor.agents.reconstruction", is_pkg))


def test_server_starts_without_the_science():
    """The extension app, its handlers and every agent's spec load without numpy, torch,
    pyuvdata or the science package: a hub image without the science extra still serves."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import cosmic_horizons_lab.server.app\n"
        "from cosmic_horizons_lab.executor.registry import agents\n"
        "[cls.schema() for cls in agents().values()]\n"
        "heavy = ('numpy', 'torch', 'scipy', 'pyuvdata', 'astropy', 'cosmic_horizons_lab.science')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
