"""One-way layers (docs/architecture.md): the import-linter contracts in pyproject.toml hold, no
module imports itself back, and labkit's own imports sit at the top of its modules.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "labkit"

# The modules allowed to import labkit modules inside functions, and why. Each keeps a promise
# that test_light_modules_load_without_torch checks: importing it does not import torch.
# None: any labkit module; a set: only those.
LOCAL_IMPORTS_ALLOWED: dict[str, tuple[set[str] | None, str]] = {
    "labkit.cli": (
        None,
        "each command imports the modules it runs when it runs (most import torch: seconds), so "
        "`labkit --help` and a mistyped option answer at once",
    ),
    "labkit.notebooks": (
        {"labkit.pos_embed"},
        "PosEmbedRule types a notebook parameter; pos_embed imports torch, and `labkit notebooks` "
        "and `labkit run` stay torch-free until a notebook runs",
    ),
    "labkit.viz.render": (
        {"labkit.clustering"},
        "features_to_rgb's PCA is clustering.pca (torch); `import labkit.viz` imports numpy only "
        "(tests/test_viz.py::test_import_is_light)",
    ),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _local_labkit_imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every labkit import inside a function of the file."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if in_function and isinstance(child, ast.Import):
                found.extend(
                    (child.lineno, a.name) for a in child.names if a.name.split(".")[0] == "labkit"
                )
            elif in_function and isinstance(child, ast.ImportFrom):
                module = child.module or ""
                if child.level or module.split(".")[0] == "labkit":
                    found.append((child.lineno, module if not child.level else f".{module}"))
            visit(child, inside)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def test_import_contracts_hold() -> None:
    """`lint-imports` keeps every contract in pyproject.toml's [tool.importlinter]."""
    exe = Path(sys.executable).with_name("lint-imports")
    command = str(exe) if exe.exists() else shutil.which("lint-imports")
    if command is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    done = subprocess.run(
        [command, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_no_module_imports_itself_back() -> None:
    """No import cycle between any two modules, a package and its own modules included (the
    acyclic_siblings contract compares siblings only)."""
    grimp = pytest.importorskip("grimp", reason="grimp comes with import-linter")
    graph = grimp.build_graph("labkit")
    cycles = sorted(
        (module, imported)
        for module in graph.modules
        for imported in graph.find_modules_directly_imported_by(module)
        if graph.chain_exists(importer=imported, imported=module)
    )
    assert not cycles, f"modules that import each other, directly or through others: {cycles}"


def test_labkit_imports_sit_at_module_top() -> None:
    """labkit's own imports are at the top of each module (heavy third-party packages may be
    imported inside functions); the exceptions are LOCAL_IMPORTS_ALLOWED, each with its reason."""
    wrong, used = [], set()
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        allowed, _ = LOCAL_IMPORTS_ALLOWED.get(module, (set(), ""))
        for line, imported in _local_labkit_imports(path):
            if module in LOCAL_IMPORTS_ALLOWED and (allowed is None or imported in allowed):
                used.add(module)
            else:
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {imported}")
    assert not wrong, "labkit imports inside functions (move them to the module's top):\n" + (
        "\n".join(wrong)
    )
    assert used == set(LOCAL_IMPORTS_ALLOWED), (
        f"exceptions no longer needed: {sorted(set(LOCAL_IMPORTS_ALLOWED) - used)}"
    )


def test_light_modules_load_without_torch() -> None:
    """The modules allowed lazy labkit imports, and the torch-free contract's, import no torch."""
    light = sorted({*LOCAL_IMPORTS_ALLOWED, "labkit.viz", "labkit.zoo", "labkit.validation"})
    code = (
        f"import importlib, sys\nfor m in {light!r}: importlib.import_module(m)\n"
        "print('torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False", f"importing {light} imports torch"
