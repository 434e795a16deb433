"""The package's shape: its parts import one way along the data's flow, its import chains stay
short, no module grows past what a reader takes in at once, and each part says what it owns.

Read from the source, not from what an import happens to load: every ``import`` statement
counts, at module level, inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

import agent_metrics_pipeline
import clickhouse_stand_in

PACKAGE_DIR = Path(agent_metrics_pipeline.__file__).resolve().parent
STAND_IN_DIR = Path(clickhouse_stand_in.__file__).resolve().parent

# The parts, along the data's flow, and which parts each may import (itself always).
# foundations -> the ClickHouse client and storage -> aggregate -> quality -> publish, with
# observe beside those three -> operations -> top
BELOW_OPERATIONS = {"core", "clickhouse", "storage", "aggregate", "quality", "publish", "observe"}
MAY_IMPORT = {
    "core": set(),
    "clickhouse": {"core"},
    "storage": {"core"},
    "aggregate": {"core", "clickhouse", "storage"},
    "quality": {"core", "storage", "aggregate"},
    "publish": {"core", "clickhouse", "storage", "aggregate", "quality"},
    "observe": {"core", "clickhouse", "storage"},
    "operations": BELOW_OPERATIONS,
    "definitions": BELOW_OPERATIONS | {"operations"},
    "demo": BELOW_OPERATIONS | {"operations"},
}
MAX_MODULE_LINES = 350
MAX_STAND_IN_MODULE_LINES = 400
MAX_CHAIN_MODULES = 6
# Stands in for polars, loaded on first use: an import of it is an import of polars.
THIRD_PARTY_STAND_INS = {"agent_metrics_pipeline.core.deferred"}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    # Under ``if TYPE_CHECKING:``: read by type checkers, never run.
    for_types_only: bool


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules_of(root: Path) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def imports_of(path: Path, root: Path, modules: dict[str, Path]) -> list[Import]:
    """The imports of ``path`` that name modules under ``root`` (``from package import
    module`` names the module)."""
    tree = ast.parse(path.read_text())
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
    importer = module_name(path, root)
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [
                f"{node.module}.{alias.name}"
                if f"{node.module}.{alias.name}" in modules
                else node.module
                for alias in node.names
            ]
        for name in names:
            if name in modules and name != importer:
                found.append(Import(importer, name, node.lineno, id(node) in typing_only))
    return found


def part_of(module: str) -> str:
    """``agent_metrics_pipeline.publish.asset`` is in part ``publish``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "package"


@functools.cache
def package_imports() -> tuple[Import, ...]:
    modules = modules_of(PACKAGE_DIR)
    return tuple(
        found for path in modules.values() for found in imports_of(path, PACKAGE_DIR, modules)
    )


def graph(imports: tuple[Import, ...], modules: set[str]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {module: set() for module in modules}
    for found in imports:
        edges[found.importer].add(found.imported)
    return edges


def circle(edges: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports, if there is any."""
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for imported in sorted(edges[module]):
            if state.get(imported) == "open":
                return [*path[path.index(imported) :], imported]
            if imported not in state and (found := visit(imported, [*path, imported])):
                return found
        state[module] = "done"
        return None

    for module in sorted(edges):
        if module not in state and (found := visit(module, [module])):
            return found
    return None


def longest_chain(edges: dict[str, set[str]]) -> list[str]:
    @functools.cache
    def from_module(module: str) -> tuple[str, ...]:
        chains = [from_module(imported) for imported in edges[module]]
        return (module, *max(chains, key=len, default=()))

    return list(max((from_module(module) for module in edges), key=len))


def test_each_part_imports_only_the_parts_below_it():
    offending = [
        f"{PACKAGE_DIR.parent / found.importer.replace('.', '/')}.py:{found.line} imports "
        f"{found.imported}: {part_of(found.importer)} may import "
        f"{', '.join(sorted(MAY_IMPORT[part_of(found.importer)])) or 'nothing else'}"
        for found in package_imports()
        if part_of(found.imported) != part_of(found.importer)
        and part_of(found.imported) not in MAY_IMPORT[part_of(found.importer)]
    ]
    assert not offending, "imports against the flow:\n" + "\n".join(offending)


def test_every_module_is_in_a_part():
    modules = set(modules_of(PACKAGE_DIR)) - {"agent_metrics_pipeline"}
    assert {part_of(module) for module in modules} == set(MAY_IMPORT)


def test_no_import_circle_in_the_package_or_the_stand_in():
    for root in (PACKAGE_DIR, STAND_IN_DIR):
        modules = modules_of(root)
        imports = tuple(
            found for path in modules.values() for found in imports_of(path, root, modules)
        )
        found = circle(graph(imports, set(modules)))
        assert found is None, f"import circle in {root.name}: {' -> '.join(found or [])}"


def test_the_longest_chain_of_imports_is_short():
    """Counted over the imports that run (not those for type checkers alone)."""
    running = tuple(
        found
        for found in package_imports()
        if not found.for_types_only and found.imported not in THIRD_PARTY_STAND_INS
    )
    modules = set(modules_of(PACKAGE_DIR)) - THIRD_PARTY_STAND_INS
    chain = longest_chain(graph(running, modules))
    print(f"longest chain ({len(chain)} modules): {' -> '.join(chain)}")
    assert len(chain) <= MAX_CHAIN_MODULES, " -> ".join(chain)


def test_no_module_is_too_long_to_read_at_once():
    for root, limit in ((PACKAGE_DIR, MAX_MODULE_LINES), (STAND_IN_DIR, MAX_STAND_IN_MODULE_LINES)):
        long = {
            str(path.relative_to(root.parent)): lines
            for path in root.rglob("*.py")
            if (lines := len(path.read_text().splitlines())) > limit
        }
        assert not long, f"over {limit} lines: {long}"


def test_every_part_says_what_it_owns_and_what_it_may_import():
    for part in sorted(set(MAY_IMPORT) - {"definitions", "demo"}):
        docstring = ast.get_docstring(ast.parse((PACKAGE_DIR / part / "__init__.py").read_text()))
        assert docstring, f"{part}/__init__.py has no docstring"
        assert "import" in docstring, f"{part}/__init__.py does not say what it may import"


def test_no_underscored_name_is_imported_across_the_stand_in_s_modules():
    imported = [
        f"{path.name}:{node.lineno} imports {alias.name} from {node.module}"
        for path in STAND_IN_DIR.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(STAND_IN_DIR.name)
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert not imported, imported
