"""The folder ownership of design.md, enforced: ml/ is a library usable without the node,
storage/ knows nothing of models or DICOM networking, and training sits on top of ml, never
the reverse."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN = {
    "ml": ("dicom_node", "storage", "pynetdicom", "sqlalchemy", "alembic"),
    "storage": ("dicom_node", "ml", "pynetdicom", "torch", "open_clip"),
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def violations(package: str, forbidden: tuple[str, ...], exempt: str | None = None) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if exempt and exempt in path.relative_to(ROOT).parts:
            continue
        for name in imported_modules(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_reach_across_the_layering(package: str) -> None:
    assert violations(package, FORBIDDEN[package]) == []


def test_ml_library_never_imports_training() -> None:
    assert violations("ml", ("ml.training",), exempt="training") == []


def test_console_pages_hold_no_sql() -> None:
    """The console's handlers call the service layer: no SQLAlchemy, and from storage only the
    Database handle, the state enum and the outbound and profile errors they name."""
    allowed = ("storage.db", "storage.states", "storage.outbound", "storage.profiles")
    found = []
    for path in sorted((ROOT / "dicom_node" / "http" / "console").rglob("*.py")):
        for name in imported_modules(path):
            if name.startswith("sqlalchemy") or (
                    name.startswith("storage") and name not in allowed):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    assert found == []
