"""The import rules of DESIGN.md's layout, checked on the source with `ast` (no module is imported).

- Nothing under `activities/`, `workflows/` or `ledger/` imports `api`: what the API and the
  worker share (metrics, the webhook inbox) lives in a neutral module both import.
- `workflows/` imports no I/O library. Activity modules a workflow names go through
  `workflow.unsafe.imports_passed_through()`; nothing I/O is imported outside such a block.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BELOW_THE_API = ("activities", "workflows", "ledger")
# Libraries that talk to the outside world (databases, HTTP, Stripe, the OS, metrics exporters)
# and Penny's own modules that do. Matched on the first dotted component, or the whole prefix.
IO_MODULES = frozenset(
    {
        "aiohttp",
        "asyncpg",
        "fastapi",
        "httpx",
        "prometheus_client",
        "psycopg",
        "psycopg2",
        "requests",
        "socket",
        "sqlalchemy",
        "starlette",
        "stripe",
        "subprocess",
        "urllib.request",
        "uvicorn",
        "penny.db",
        "penny.services",
        "penny.settings",
        "ledger.ledger",
    }
)
PASS_THROUGH_CONTEXT = "imports_passed_through"


@dataclass(frozen=True)
class ImportSite:
    path: Path
    line: int
    module: str
    passed_through: bool

    def __str__(self) -> str:
        where = " (inside imports_passed_through)" if self.passed_through else ""
        return f"{self.path.relative_to(ROOT)}:{self.line} imports {self.module}{where}"


def _source_files(package: str) -> list[Path]:
    return sorted(path for path in (ROOT / package).rglob("*.py") if "__pycache__" not in path.parts)


def _is_pass_through(node: ast.With | ast.AsyncWith) -> bool:
    for item in node.items:
        call = item.context_expr
        if isinstance(call, ast.Call):
            function = call.func
            name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)
            if name == PASS_THROUGH_CONTEXT:
                return True
    return False


def _imported_modules(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        # Relative imports stay inside their own package, which is checked as a whole.
        return []
    assert node.module is not None
    # `from api import metrics` imports `api` and `api.metrics`: the module is what is checked.
    return [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]


def _import_sites(path: Path, source: str | None = None) -> Iterator[ImportSite]:
    """Every import in the file (or in `source`, named `path`), at any depth: functions and
    `TYPE_CHECKING` blocks included."""

    def visit(node: ast.AST, passed_through: bool) -> Iterator[ImportSite]:
        if isinstance(node, ast.Import | ast.ImportFrom):
            for module in _imported_modules(node):
                yield ImportSite(path, node.lineno, module, passed_through)
        inside = passed_through or (isinstance(node, ast.With | ast.AsyncWith) and _is_pass_through(node))
        for child in ast.iter_child_nodes(node):
            yield from visit(child, inside)

    text = path.read_text() if source is None else source
    yield from visit(ast.parse(text, filename=str(path)), False)


def _is_under(module: str, prefixes: frozenset[str] | tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


@pytest.mark.parametrize("package", BELOW_THE_API)
def test_nothing_below_the_api_imports_the_api(package: str) -> None:
    files = _source_files(package)
    assert files, f"no source files found under {package}/"
    offending = [str(site) for path in files for site in _import_sites(path) if _is_under(site.module, ("api",))]
    assert offending == []


def test_workflows_import_no_io_outside_pass_through_blocks() -> None:
    files = _source_files("workflows")
    assert files, "no source files found under workflows/"
    offending = [
        str(site)
        for path in files
        for site in _import_sites(path)
        if not site.passed_through and _is_under(site.module, IO_MODULES)
    ]
    assert offending == []


def test_the_checks_see_violations() -> None:
    """The walker itself: an `api` import in a function and an I/O import outside a pass-through
    block are found; the same I/O import inside one is marked as passed through."""
    sample = (
        "from temporalio import workflow\n"
        "with workflow.unsafe.imports_passed_through():\n"
        "    import sqlalchemy\n"
        "import httpx\n"
        "def handler():\n"
        "    from api import metrics\n"
    )
    sites = list(_import_sites(ROOT / "workflows" / "sample.py", sample))
    assert [(site.module, site.passed_through) for site in sites] == [
        ("temporalio", False),
        ("temporalio.workflow", False),
        ("sqlalchemy", True),
        ("httpx", False),
        ("api", False),
        ("api.metrics", False),
    ]
    assert not _is_under("stripe_emulator.app", IO_MODULES) and _is_under("stripe.params", IO_MODULES)
