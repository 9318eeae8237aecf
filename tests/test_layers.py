"""The packages' dependencies point one way (the README's architecture): the service (``app/``) never imports
the Celery app (``worker/``, it sends tasks by name: ``app.tasks``) nor the command line (``cli/``), and the
engine (``training/``) imports none of the three. Only ``cli/`` puts the service and the worker together."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"app": {"worker", "cli"}, "training": {"app", "worker", "cli"}}


def imported_packages(path: Path) -> set[str]:
    """The top-level packages a module imports, wherever the import stands (inside functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_imports_a_package_above_its_layer(package: str):
    crossings = [
        f"{path.relative_to(ROOT)} imports {', '.join(sorted(imported_packages(path) & FORBIDDEN[package]))}"
        for path in sorted((ROOT / package).rglob("*.py"))
        if imported_packages(path) & FORBIDDEN[package]
    ]
    assert crossings == []


def test_the_api_process_loads_neither_the_worker_nor_the_cli():
    """What the static check means at run time: the API's modules loaded, none of worker/ or cli/ among them."""
    code = "import sys, app.main; print(sorted({m.split('.')[0] for m in sys.modules} & {'worker', 'cli'}))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


QUERY_BUILDERS = {"select", "update", "insert", "delete", "text", "func", "exists", "and_", "or_"}


def test_dispatch_decides_and_the_repositories_query():
    """``app/dispatch`` builds no SQL of its own: its queries are functions of ``app/repositories``."""
    building = {
        f"{path.relative_to(ROOT)}: {alias.name}"
        for path in sorted((ROOT / "app" / "dispatch").rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sqlalchemy"
        for alias in node.names
        if alias.name in QUERY_BUILDERS
    }
    assert building == set()
