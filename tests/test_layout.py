"""The package layout: jobs import downward only, and the entry scripts run from the installed package."""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
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
    assert set(SUBPACKAGES) >= {
        "runtime", "s3gen", "student", "data", "training", "evaluation", "compress", "release", "utils"
    }  # fmt: skip
    scripts = {"fit", "prepare", "evaluate", "quantize", "bench", "export", "publish", "corpus", "curve", "diagnose",
               "tradeoff"}  # fmt: skip
    assert set(ENTRY_POINTS) == scripts
    for name in SUBPACKAGES:
        init = (PACKAGE / name / "__init__.py").read_text()
        assert ast.get_docstring(ast.parse(init)), f"train/{name}/__init__.py says what lives there"


def test_imports_point_downward_only():
    graph = package_graph()
    for name, imports in graph.items():
        assert not set(imports) & set(ENTRY_POINTS), f"train.{name} imports an entry script: {imports}"
    assert graph["runtime"] == set(), "the runtime is the bottom layer: it imports no other part of train"
    assert graph["utils"] <= {"runtime"}, "utils holds the training side's shared helpers, above the runtime only"
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
    shadowed = {n: _find(n, path) for n in names if _find(n, path)}
    assert not shadowed, {n: spec.origin or list(spec.submodule_search_locations or []) for n, spec in shadowed.items()}


def _find(name: str, path: list[str]):
    from importlib.machinery import PathFinder

    return PathFinder.find_spec(name, path)


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


# What the runtime may import: Chatterbox's environment has these (chatterbox-tts 0.1.7 pins torch,
# safetensors and huggingface_hub, and vocos brings PyYAML). ONNX Runtime only inside the functions
# that run a graph (numpy with it: its own dependency), so the PyTorch runtime never needs it.
RUNTIME_IMPORTS = {"torch", "vocos", "yaml", "safetensors", "huggingface_hub"}
RUNTIME_LAZY_IMPORTS = RUNTIME_IMPORTS | {"onnxruntime", "numpy", "torchaudio"}  # vocos depends on torchaudio
TRAINING_SIDE = ("lightning", "hydra", "omegaconf", "wandb", "torchao", "torch_pruning", "onnx", "onnxscript")


def _imports(tree: ast.AST) -> list[tuple[str, bool]]:
    """``(top-level package, lazy)`` of every import: lazy inside a function or an ``if TYPE_CHECKING:``."""
    found = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                inner = True
            if isinstance(child, ast.Import):
                found.extend((alias.name.split(".")[0], inner) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module.split(".")[0], inner))
            visit(child, inner)

    visit(tree, False)
    return found


def test_the_runtime_imports_only_what_a_chatterbox_environment_has():
    for path in sorted((PACKAGE / "runtime").glob("*.py")):
        for module in imported_train_modules(path):
            assert module.startswith("train.runtime"), f"{path.name} imports {module}: the runtime stands alone"
        for name, lazy in _imports(ast.parse(path.read_text())):
            if name in sys.stdlib_module_names or name in ("train", "__future__"):
                continue
            allowed = RUNTIME_LAZY_IMPORTS if lazy else RUNTIME_IMPORTS
            assert name in allowed, f"train/runtime/{path.name} imports {name}{' (lazily)' if lazy else ''}"


@pytest.mark.slow
def test_using_a_release_loads_nothing_of_the_training_side(tmp_path):
    """Load a release in every runtime, decode and stream: no training, evaluation or compression
    module, and none of their libraries, is imported on the way."""
    from helpers import student

    from train.release.vocos_layout import write_vocos_layout
    from train.student.graph import export_onnx
    from train.student.quantized import prepare, strip

    qat = prepare(student(dim=32, intermediate_dim=64, num_layers=2)).eval()
    folder = tmp_path / "release"
    folder.mkdir()
    write_vocos_layout(strip(qat), folder)  # as train/export.py lays a release out
    export_onnx(qat, folder / "model.onnx")
    export_onnx(qat, folder / "model.int8.onnx", quantize=True)
    code = f"""
import sys, torch
from train.runtime import ChatterboxStream, load_vocoder
mel = torch.randn(1, 80, 30) - 5
for runtime in ("torch", "onnx", "int8"):
    vocoder = load_vocoder({str(folder)!r}, runtime=runtime)
    wav, _ = vocoder.inference(speech_feat=mel)
    stream = ChatterboxStream(vocoder)
    streamed = torch.cat([stream.push(mel[..., :13]), stream.push(mel[..., 13:]), stream.flush()], -1)
    assert streamed.shape == wav.shape == (1, 30 * 480), runtime
loaded = sorted({{m.split(".")[0] if not m.startswith("train.") else ".".join(m.split(".")[:2]) for m in sys.modules}})
print(" ".join(loaded))
"""
    env = {**os.environ, "VOCOS_DISTILL_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = set(done.stdout.split())
    ours = {m for m in loaded if m.startswith("train.")}
    assert ours <= {"train.runtime"}, ours
    assert not loaded & set(TRAINING_SIDE), loaded & set(TRAINING_SIDE)


@pytest.mark.slow
def test_a_second_checkout_writes_its_run_into_itself_not_into_the_installed_one(tmp_path):
    """With the package installed (editable) from this checkout, ``python train/fit.py`` in another
    checkout writes its run there: outputs follow the checkout run from (``.project-root``)."""
    from helpers import write_clips

    second = tmp_path / "second"
    second.mkdir()
    for name in (".project-root", "conf", "train"):  # what a clone holds that a fit reads
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, second / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, second / name)
    clips = write_clips(tmp_path / "clips")
    ours = REPO / "checkpoints" / "runs" / "second-checkout"
    command = [
        sys.executable, "train/fit.py", "experiment=tiny", "task_name=second-checkout", "~teacher",
        "module.target_weights={teacher:0,audio:1}", f"data.audio_dirs=[{clips}]", "data.batch_size=1",
        "trainer.max_steps=2", "validate_first=false",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=second, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((second / "checkpoints" / "runs" / "second-checkout").glob("*/checkpoints/last.ckpt"))
    assert len(runs) == 1, done.stderr[-2000:]
    assert not ours.exists(), f"the run was written into the installed checkout: {ours}"


def test_readmes_map_is_the_tree():
    """README's "What is here" names every room of train/, and every file or folder it names exists."""
    import re

    text = (REPO / "README.md").read_text()
    section = text.split("\n## What is here\n", 1)[1].split("\n## ", 1)[0]
    rooms = set(re.findall(r"^\| `train/(\w+)/` \|", section, re.M))
    assert rooms == set(SUBPACKAGES), rooms ^ set(SUBPACKAGES)
    for name in re.findall(r"`(train/[\w/.]+)`", section):
        assert (REPO / name).exists(), name
    for room in rooms:  # the modules a room's row names, by file name
        row = next(line for line in section.splitlines() if line.startswith(f"| `train/{room}/`"))
        for module in re.findall(r"`(\w+\.py)`", row):
            assert (PACKAGE / room / module).is_file() or (PACKAGE / module).is_file(), f"{room}: {module}"
    assert set(re.findall(r"`(\w+)\.py`", section.split("|", 1)[0])) >= set(ENTRY_POINTS)
