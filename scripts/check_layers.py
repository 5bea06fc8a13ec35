"""Check the project's import layers: `python3 scripts/check_layers.py` prints one line per problem, exits 1 if any.

It reads the packages' source under the repository root (ast; imports at module level and inside functions alike,
since both run) and checks three rules:
1. the layers: each package imports only the project packages below it (LAYERS), so the runtime (nanovllm) never
   pulls in the tuner or its database;
2. the extras: the runtime's packages import none of the distributions only the [tune] and [dashboard] extras
   install (EXTRAS), so `pip install nano-vllm-coconut` runs `LLM()`;
3. no import cycle between packages, and none between modules (it prints the first it finds of each).
`import a.b.c` and `from a.b import c` count as an edge to the module a.b.c (to a.b when c is a name in it); the
parent packages it also runs are not counted, else every package whose __init__ re-exports a submodule would be a
cycle. Standard library only, so it runs before anything is installed.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

# Each package and the other project packages it may import: what it needs today, so that a new dependency between
# packages is a decision made here. nvc_cli, the command line on top, may import them all.
LAYERS: dict[str, set[str]] = {
    "kernels": set(),
    "tuning_table": {"kernels"},
    "nanovllm": {"kernels", "tuning_table"},
    "search_spaces": {"kernels", "tuning_table"},
    "db": set(),  # it stores what the tuner hands it
    "autotune": {"kernels", "tuning_table", "search_spaces", "db"},
    "dashboard": {"tuning_table", "db"},  # it reads the database, not the tuner
    "nvc_cli": {"kernels", "tuning_table", "search_spaces", "db", "autotune", "dashboard"},
}
# What only the extras install, and the packages the base install (the runtime) consists of.
EXTRAS = {"optuna", "sqlalchemy", "alembic", "pandas", "click", "plotly"}
BASE = ("kernels", "tuning_table", "nanovllm")
ROOT = Path(__file__).resolve().parents[1]


def find_modules(root: Path) -> dict[str, Path]:
    """Module name -> source file, for every module of the LAYERS packages under `root`."""
    modules = {}
    for package in LAYERS:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported project module, line) for every import in the module `name`."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package, one level up per extra dot
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join([*package, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a name c: the module a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                found.append((target, node.lineno))
    return found


def third_party(path: Path) -> list[tuple[str, int]]:
    """(top-level name, line) of every absolute import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name.partition(".")[0], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.append((node.module.partition(".")[0], node.lineno))
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def check(root: Path = ROOT) -> list[str]:
    """Every problem found under `root`, one line each; empty when the layers hold."""
    modules = find_modules(root)
    if not modules:
        return [f"no modules of {', '.join(LAYERS)} under {root}"]
    problems = []
    module_graph: dict[str, set[str]] = {m: set() for m in modules}
    package_graph: dict[str, set[str]] = {p: set() for p in LAYERS}
    for name, path in modules.items():
        package = name.partition(".")[0]
        for target, line in imports(name, path, modules):
            module_graph[name].add(target)
            other = target.partition(".")[0]
            if other == package:
                continue
            package_graph[package].add(other)
            if other not in LAYERS[package]:
                allowed = ", ".join(sorted(LAYERS[package])) or "no other project package"
                problems.append(f"{path.relative_to(root)}:{line}: {package} imports {target} "
                                f"({package} may import {allowed})")
    for name, path in modules.items():
        if name.partition(".")[0] in BASE:
            problems += [f"{path.relative_to(root)}:{line}: {name.partition('.')[0]} imports {extra}, which only an "
                         "extra installs" for extra, line in third_party(path) if extra in EXTRAS]
    for what, graph in (("packages", package_graph), ("modules", module_graph)):
        cycle = find_cycle(graph)
        if cycle:
            problems.append(f"import cycle between {what}: {' -> '.join(cycle)}")
    return problems


def main() -> int:
    problems = check()
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
