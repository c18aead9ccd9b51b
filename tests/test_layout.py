"""The package layout: jobs import downward only, and the entry scripts run from the installed package."""

import ast
import subprocess
import sys
from pathlib import Path

from helpers import REPO

PACKAGE = REPO / "train"
ENTRY_POINTS = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
SUBPACKAGES = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))


def imported_train_modules(path: Path) -> set[str]:
    """Every ``train.*`` module a source file imports, at any depth in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.update(name for name in names if name.split(".")[0] == "train")
    return found


def package_graph() -> dict[str, set[str]]:
    """Subpackage -> the other subpackages (or entry scripts) its modules import."""
    graph: dict[str, set[str]] = {name: set() for name in SUBPACKAGES}
    for name in SUBPACKAGES:
        for path in (PACKAGE / name).rglob("*.py"):
            for module in imported_train_modules(path):
                parts = module.split(".")
                if len(parts) > 1 and parts[1] != name and (parts[1] in SUBPACKAGES or parts[1] in ENTRY_POINTS):
                    graph[name].add(parts[1])
    return graph


def test_the_library_is_grouped_by_job_with_only_entry_points_at_the_top():
    assert set(SUBPACKAGES) >= {"s3gen", "student", "data", "training", "evaluation", "compress", "release", "utils"}
    scripts = {"fit", "prepare", "evaluate", "quantize", "bench", "export", "publish", "corpus", "curve", "diagnose"}
    assert set(ENTRY_POINTS) == scripts
    for name in SUBPACKAGES:
        init = (PACKAGE / name / "__init__.py").read_text()
        assert ast.get_docstring(ast.parse(init)), f"train/{name}/__init__.py says what lives there"


def test_imports_point_downward_only():
    graph = package_graph()
    for name, imports in graph.items():
        assert not set(imports) & set(ENTRY_POINTS), f"train.{name} imports an entry script: {imports}"
    assert graph["utils"] == set(), "utils is the bottom layer"
    # no cycles: repeatedly remove packages that import nothing left
    remaining = {k: set(v) for k, v in graph.items()}
    while remaining:
        leaves = [k for k, v in remaining.items() if not v & set(remaining)]
        assert leaves, f"import cycle among {sorted(remaining)}: {remaining}"
        for leaf in leaves:
            del remaining[leaf]


def test_the_public_names_keep_their_names():
    from train.s3gen import HiFTGenerator, S3GenMel, load_teacher
    from train.student import build_student, load_student

    assert all(callable(x) for x in (HiFTGenerator, S3GenMel, load_teacher, build_student, load_student))


def test_nothing_in_train_shadows_an_installed_module():
    """``python train/fit.py`` puts train/ first on sys.path: its top-level names must not hide anything."""
    names = ENTRY_POINTS + SUBPACKAGES
    path = [p for p in sys.path if Path(p or ".").resolve() not in (PACKAGE, REPO)]
    shadowed = [n for n in names if _find(n, path)]
    assert not shadowed


def _find(name: str, path: list[str]) -> bool:
    from importlib.machinery import PathFinder

    return PathFinder.find_spec(name, path) is not None


def test_entry_scripts_run_from_the_installed_package_without_path_tricks(tmp_path):
    for script in ENTRY_POINTS:
        source = (PACKAGE / f"{script}.py").read_text()
        assert "sys.path" not in source, script
    # run from another folder, as a user would after `pip install -e .`
    result = subprocess.run(
        [sys.executable, str(PACKAGE / "fit.py"), "--cfg", "job", "experiment=tiny", "~teacher"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "task_name: tiny" in result.stdout
