"""polyvox's own import graph, read from the source (function-level imports included).

Two things are derived from it rather than written down: the code a stage runs (its import
closure, :meth:`polyvox.stages.Stage.code`, which DVC's deps and the stage's fingerprint both
use), and the layering that ``tests/test_layers.py`` holds the packages to.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.name  # "polyvox"


@lru_cache(maxsize=1)
def modules() -> dict[str, Path]:
    """Every module of the package: dotted name → file."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imported(name: str, path: Path) -> set[str]:
    """The polyvox modules that ``name`` imports anywhere in its body, and the packages that
    importing them runs (``a.b.c`` runs ``a/__init__`` and ``a/b/__init__``)."""
    known = modules()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            candidates = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for candidate in candidates:
            # `import polyvox.a.b` names a module; `from polyvox.a import b` may name one too
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate.startswith(f"{ROOT}."):
                found.add(candidate)
    for module in list(found):
        parts = module.split(".")
        found.update(".".join(parts[:i]) for i in range(2, len(parts)))
    found.discard(name)
    return found


@lru_cache(maxsize=1)
def graph() -> dict[str, frozenset[str]]:
    """module → the polyvox modules it imports."""
    return {name: frozenset(_imported(name, path)) for name, path in modules().items()}


def closure(*names: str) -> set[str]:
    """The modules that importing ``names`` can run: theirs and everything they import, transitively."""
    edges, seen, todo = graph(), set(), list(names)
    while todo:
        name = todo.pop()
        if name not in seen:
            if name not in edges:
                raise KeyError(f"{name}: not a module of {ROOT}")
            seen.add(name)
            todo.extend(edges[name])
    return seen


def unit(module: str) -> str:
    """The top-level part of the package a module belongs to: ``polyvox.models.acoustic`` →
    ``models``, ``polyvox.config`` → ``config.py`` (a path relative to the package)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__.py"
    return parts[1] if (PACKAGE / parts[1]).is_dir() else f"{parts[1]}.py"


# The architecture, bottom to top: a part of the package may import its own layer's parts and the
# layers below, never a layer above; neither the parts' graph nor a part's modules have cycles.
# Serving (the service and the runtime it loads) imports nothing of training.
LAYERS: tuple[tuple[str, ...], ...] = (
    # foundation: settings, files, fingerprints, progress, tracking, the text front-end, the engines,
    # the shipped weights
    ("__init__.py", "config.py", "fileio.py", "cache.py", "fingerprint.py", "imports.py", "stages.py", "lock.py",
     "progress.py", "parallel.py", "workspace.py", "tracking.py", "engines.py", "text", "pretrained", "dvcstate.py"),
    ("models", "signal", "frontends"),  # networks, signal processing, the model's input front-ends
    ("runtime", "judges"),  # synthesis from a trained voice; ASR, speaker similarity, DNSMOS
    ("corpus", "validate", "clean", "features", "train", "ensemble", "evaluate", "registry"),  # the stages
    ("pretrain",),  # composes the data stages and the trainer into the base
    ("serve", "dashboard"),  # the apps
    ("flow.py", "cli.py"),  # the entry points
)
TRAINING = frozenset({"corpus", "validate", "clean", "features", "train", "pretrain", "ensemble", "evaluate", "registry",
                      "tracking.py", "flow.py", "cli.py"})
SERVING = ("polyvox.serve.app", "polyvox.runtime.bundle", "polyvox.runtime.onnx")


def layer_violations(edges: dict[str, frozenset[str]] | None = None) -> list[str]:
    """What breaks :data:`LAYERS` in a module graph (default: the package's own); empty when nothing."""
    edges = graph() if edges is None else edges
    rank = {part: level for level, parts in enumerate(LAYERS) for part in parts}
    problems, units, inside = [], {}, {}
    for source, targets in sorted(edges.items()):
        for target in sorted(targets):
            a, b = unit(source), unit(target)
            if a not in rank or b not in rank:
                problems.append(f"{source} → {target}: {(a if a not in rank else b)!r} is in no layer of LAYERS")
            elif a != b:
                units.setdefault(a, set()).add(b)
                if rank[b] > rank[a]:
                    problems.append(f"{source} imports {target}: {a} (layer {rank[a]}) reaches up into {b} (layer {rank[b]})")
            elif source != target:
                inside.setdefault(source, set()).add(target)
    problems += [f"import cycle between parts: {' → '.join(cycle)}" for cycle in _cycles(units)]
    # Inside a part too: two modules that import each other (at function level, say) are one module
    # split in two, and whichever loads first sees the other half-initialised.
    problems += [f"import cycle inside {unit(cycle[0])}: {' → '.join(cycle)}" for cycle in _cycles(inside)]
    reached = set()
    todo, seen = list(SERVING), set()
    while todo:
        name = todo.pop()
        if name in seen or name not in edges:
            continue
        seen.add(name)
        todo.extend(edges[name])
        reached |= {(name, t) for t in edges[name] if unit(t) in TRAINING}
    problems += [f"serving imports training: {a} → {b}" for a, b in sorted(reached)]
    return problems


def _cycles(units: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of nodes (parts, or the modules of one part; depth-first search)."""
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(units.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(units):
        if node not in state:
            visit(node)
    return cycles
