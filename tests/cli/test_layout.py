"""How the cli modules depend on each other."""

from __future__ import annotations

import ast
from pathlib import Path

CLI = Path(__file__).resolve().parents[2] / "cli"


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_only_main_imports_the_subcommands_and_no_module_imports_main() -> None:
    """cli/main.py dispatches to the others; none of them reaches back into it (no import cycle)."""
    for path in sorted(CLI.glob("*.py")):
        if path.name != "main.py":
            assert "cli.main" not in imported_modules(path), path.name


# The terminal client of issue 11: it must work against a gateway on another machine.
CLIENT_MODULES = ("batch.py", "client.py", "manifest.py", "progress.py", "prompts.py")
SERVER_PACKAGES = ("api", "worker", "shared", "simulator")


def test_the_batch_client_speaks_only_http_and_imports_no_server_code() -> None:
    """cli/batch.py and its helpers import nothing of the api, workers, shared or simulator."""
    for name in CLIENT_MODULES:
        for module in imported_modules(CLI / name):
            assert module.split(".")[0] not in SERVER_PACKAGES, f"{name} imports {module}"
