"""The floors of the house (docs/architecture.md): the core is a plain library without any GUI package, services
and the scripting API import no Qt, the widgets do not import each other."""

import ast
import subprocess
import sys
from pathlib import Path

import napari_samtune.core

GUI = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "superqt", "vispy")
CORE = Path(napari_samtune.core.__file__).parent


def test_no_gui_import_statement_in_core():
    offenders = []
    for path in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in GUI]
    assert offenders == []


def test_importing_every_core_module_loads_no_gui_package():
    modules = [
        "napari_samtune.core." + ".".join(p.relative_to(CORE).with_suffix("").parts)
        for p in CORE.rglob("*.py")
        if p.name != "__init__.py"
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {GUI!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


PACKAGE = CORE.parent
QT = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt", "vispy")


def _imports(path: Path) -> list[str]:
    """Absolute module names ``path`` imports (relative imports resolved inside ``napari_samtune``)."""
    parts = ("napari_samtune", *path.relative_to(PACKAGE).with_suffix("").parts)
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = parts[: len(parts) - node.level] if node.level else ()
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names += [module] + ([f"{module}.{a.name}" for a in node.names] if node.level else [])
    return names


def _offenders(folder: Path, forbidden: tuple[str, ...]) -> list[str]:
    paths = [folder] if folder.is_file() else sorted(folder.rglob("*.py"))
    return [
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in paths
        for name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


def test_the_floors_import_only_downwards():
    """core imports neither napari, Qt nor the floors above it; services no Qt; api no Qt widget module; the
    command line nothing of napari (docs/architecture.md)."""
    assert (
        _offenders(CORE, ("napari", *QT, "napari_samtune.services", "napari_samtune._qt", "napari_samtune.api")) == []
    )
    assert _offenders(PACKAGE / "services", (*QT, "napari_samtune._qt", "napari_samtune.api", "napari.qt")) == []
    assert _offenders(PACKAGE / "api.py", (*QT, "napari_samtune._qt", "napari.qt")) == []
    assert _offenders(PACKAGE / "cli", ("napari", *QT, "napari_samtune.services", "napari_samtune._qt")) == []


def test_the_widgets_do_not_import_each_other():
    """Each widget is a view of the session: none imports another widget's module."""
    widgets = {"prompt_widget", "finetune_widget", "uncertainty_widget"}
    for name in widgets:
        others = tuple(f"napari_samtune._qt.{other}" for other in widgets - {name})
        assert _offenders(PACKAGE / "_qt" / f"{name}.py", others) == []


def test_importing_api_and_services_loads_no_qt():
    """napari's layer models bring magicgui and vispy (no Qt); a Qt binding or a widget module must not come."""
    bindings = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt", "napari_samtune._qt", "napari._qt")
    code = (
        "import sys, napari_samtune.api, napari_samtune.services.session\n"
        f"print(sorted(m for m in sys.modules if m.startswith({bindings!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
