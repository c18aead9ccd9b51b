"""The layout: the runtime (``vocos_distill``) stands alone and installs alone; the training code
(``train/``) is grouped by job, imports downward only, and runs from its checkout."""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

PACKAGE = REPO / "train"
RUNTIME = REPO / "vocos_distill"
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
        "s3gen", "student", "data", "training", "evaluation", "compress", "release", "utils"
    }  # fmt: skip
    scripts = {"fit", "prepare", "evaluate", "quantize", "bench", "export", "publish", "corpus", "curve", "diagnose",
               "tradeoff", "listen"}  # fmt: skip
    assert set(ENTRY_POINTS) == scripts
    for name in SUBPACKAGES:
        init = (PACKAGE / name / "__init__.py").read_text()
        assert ast.get_docstring(ast.parse(init)), f"train/{name}/__init__.py says what lives there"


def test_imports_point_downward_only():
    graph = package_graph()
    for name, imports in graph.items():
        assert not set(imports) & set(ENTRY_POINTS), f"train.{name} imports an entry script: {imports}"
    assert graph["utils"] == set(), "utils holds the training side's shared helpers: it imports no other room"
    assert_acyclic(graph)


def assert_acyclic(graph: dict[str, set[str]]) -> None:
    """No import cycle: remove the modules that import nothing left, until none remain."""
    remaining = {k: set(v) for k, v in graph.items()}
    while remaining:
        leaves = [k for k, v in remaining.items() if not v & set(remaining)]
        assert leaves, f"import cycle among {sorted(remaining)}: { {k: sorted(v) for k, v in remaining.items()} }"
        for leaf in leaves:
            del remaining[leaf]


def test_the_public_names_keep_their_names():
    from train.s3gen import HiFTGenerator, S3GenMel, load_teacher
    from train.student import build_student, from_pretrained

    assert all(callable(x) for x in (HiFTGenerator, S3GenMel, load_teacher, build_student, from_pretrained))


def test_nothing_in_train_shadows_an_installed_module():
    """``python train/fit.py`` puts train/ first on sys.path: its top-level names must not hide anything."""
    names = ENTRY_POINTS + SUBPACKAGES
    path = [p for p in sys.path if Path(p or ".").resolve() not in (PACKAGE, REPO)]
    shadowed = {n: _find(n, path) for n in names if _find(n, path)}
    assert not shadowed, {n: spec.origin or list(spec.submodule_search_locations or []) for n, spec in shadowed.items()}


def _find(name: str, path: list[str]):
    from importlib.machinery import PathFinder

    return PathFinder.find_spec(name, path)


def test_entry_scripts_find_their_checkout_and_run_from_any_folder(tmp_path):
    """``train/`` is not installed: each entry script puts its own checkout on ``sys.path`` (rootutils
    and the ``.project-root`` marker, as lightning-hydra-template does) and touches it nowhere else."""
    import importlib.util

    assert importlib.util.find_spec("vocos_distill").origin.startswith(str(RUNTIME))
    for script in ENTRY_POINTS:
        source = (PACKAGE / f"{script}.py").read_text()
        assert source.count('rootutils.setup_root(__file__, indicator=".project-root", pythonpath=True') == 1, script
        assert "sys.path" not in source, script
    result = subprocess.run(
        [sys.executable, str(PACKAGE / "fit.py"), "--cfg", "job", "experiment=tiny", "~teacher"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "task_name: tiny" in result.stdout


def runtime_imports(path: Path) -> set[str]:
    """The ``vocos_distill`` modules a runtime file imports, at any depth (in functions and under
    ``if TYPE_CHECKING:`` too): what a cycle could hide behind."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.update(
            n.split(".")[1]
            for n in names
            if n.startswith("vocos_distill.") and (RUNTIME / f"{n.split('.')[1]}.py").is_file()
        )
    return found - {path.stem}


def test_the_runtime_modules_import_each_other_without_a_cycle():
    """No runtime module imports one that imports it back, directly or through others, with no
    import inside a function to hide it: each module's imports of the others are at its top."""
    graph = {p.stem: runtime_imports(p) for p in RUNTIME.glob("*.py") if p.stem != "__init__"}
    for path in RUNTIME.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                inner = [n for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom)]
                assert not [ast.unparse(n) for n in inner if "vocos_distill" in ast.unparse(n)], (path.name, node.name)
    assert_acyclic(graph)
    assert graph["vocoder"] <= {"config", "errors"}, "the interface imports no implementation"


@pytest.mark.slow
def test_the_wheel_holds_the_runtime_only(tmp_path):
    """What ``pip install`` of this repository puts in site-packages: ``vocos_distill`` and its
    metadata, no training module; its version is the package's."""
    import zipfile

    import vocos_distill

    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path, REPO],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("vocos_distill-*.whl")
    assert wheel.name.startswith(f"vocos_distill-{vocos_distill.__version__}-")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"vocos_distill", f"vocos_distill-{vocos_distill.__version__}.dist-info"}, tops


# What the runtime may import: Chatterbox's environment has these (chatterbox-tts 0.1.7 pins torch,
# safetensors and huggingface_hub, and vocos brings PyYAML). ONNX Runtime only inside the functions
# that run a graph (numpy with it: its own dependency), so the PyTorch runtime never needs it.
RUNTIME_IMPORTS = {"torch", "vocos", "yaml", "safetensors", "huggingface_hub"}
# vocos depends on torchaudio; onnx (s3tokenizer requires it) only for the conditional decoder's int8 check
RUNTIME_LAZY_IMPORTS = RUNTIME_IMPORTS | {"onnxruntime", "numpy", "torchaudio", "onnx"}
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
    for path in sorted(RUNTIME.glob("*.py")):
        assert not imported_train_modules(path), f"{path.name} imports the training code: the runtime stands alone"
        for name, lazy in _imports(ast.parse(path.read_text())):
            if name in sys.stdlib_module_names or name in ("vocos_distill", "__future__"):
                continue
            allowed = RUNTIME_LAZY_IMPORTS if lazy else RUNTIME_IMPORTS
            assert name in allowed, f"vocos_distill/{path.name} imports {name}{' (lazily)' if lazy else ''}"


@pytest.mark.slow
def test_using_a_release_beside_a_users_train_py_loads_nothing_of_the_training_side(tmp_path):
    """A Chatterbox user's project often has a ``train.py`` (or a ``train/`` folder) where it runs,
    or beside its script. From such a folder, load a release in every runtime, decode and stream:
    neither of the user's files is imported, nor any training module or its libraries."""
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
    project = tmp_path / "project"
    (project / "train").mkdir(parents=True)
    (project / "app").mkdir()
    shadow = "raise RuntimeError('the user\\'s own train module was imported')\n"
    for path in (project / "train.py", project / "train" / "__init__.py", project / "app" / "train.py"):
        path.write_text(shadow)
    (project / "app" / "main.py").write_text(f"""
import sys, torch
from vocos_distill import ChatterboxStream, ChatterboxVocoder, from_pretrained
mel = torch.randn(1, 80, 30) - 5
for runtime in ("torch", "onnx", "int8"):
    vocoder = ChatterboxVocoder(from_pretrained({str(folder)!r}, runtime=runtime))
    wav, _ = vocoder.inference(speech_feat=mel)
    stream = ChatterboxStream(vocoder)
    streamed = torch.cat([stream.push(mel[..., :13]), stream.push(mel[..., 13:]), stream.flush()], -1)
    assert streamed.shape == wav.shape == (1, 30 * 480), runtime
print(" ".join(sorted({{m.split(".")[0] for m in sys.modules}})))
""")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"VOCOS_DISTILL_CACHE": str(tmp_path / "cache")}
    source = (project / "app" / "main.py").read_text()
    for command in ([sys.executable, "app/main.py"], [sys.executable, "-c", source]):  # beside the script; in the cwd
        done = subprocess.run(command, capture_output=True, text=True, cwd=project, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        loaded = set(done.stdout.split())
        assert "vocos_distill" in loaded and "train" not in loaded, loaded
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


def test_the_design_notes_map_the_tree():
    """docs/design.md's "What is here" names every room of train/ and every runtime module, and
    every file or folder it names exists."""
    import re

    text = (REPO / "docs" / "design.md").read_text()
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
    # the runtime's modules, in the list under the table (a table cell held them all, 1,465 characters)
    runtime = section.split("The runtime's modules", 1)[1].split("\n\n", 2)[1]
    modules = {p.name for p in RUNTIME.glob("*.py")} - {"__init__.py"}
    assert set(re.findall(r"`(\w+\.py)`", runtime)) == modules
    assert max(len(cell) for line in section.splitlines() if line.startswith("|") for cell in line.split("|")) < 400


# -- one owner for each job (issue 39) -----------------------------------------------------------------
def project_modules() -> dict[str, Path]:
    """Every module of the training code and the runtime, by dotted name."""
    out = {}
    for root in (PACKAGE, RUNTIME):
        for path in root.rglob("*.py"):
            rel = path.relative_to(REPO).with_suffix("")
            out[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = path
    return out


def module_graph() -> dict[str, set[str]]:
    """Module -> the project's modules it imports, at any depth in the file (functions included):
    ``from a.b import c`` counts as ``a.b.c`` when that is a module, else as ``a.b``."""
    modules = project_modules()
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    found.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_no_module_imports_itself_round_a_circle():
    """Between modules, not only packages, and counting imports hidden in functions."""
    graph = module_graph()
    assert "train.evaluation.score_cache" in graph and "vocos_distill.release" in graph
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import circle: " + " -> ".join([*path[path.index(name) :], name]))
        if name in done:
            return
        for other in sorted(graph[name]):
            visit(other, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_every_module_is_under_500_lines():
    sizes = {name: len(path.read_text().splitlines()) for name, path in project_modules().items()}
    assert max(sizes.values()) > 100  # it measured something
    assert {name: n for name, n in sizes.items() if n >= 500} == {}


OWN = ("train", "vocos_distill")


def test_a_function_level_import_of_the_projects_own_modules_says_why():
    """Imports inside functions hide dependencies; one of the project's own modules is imported
    there only to keep something slow or optional off a path (a comment on or above it says so)."""
    silent = []
    for path in project_modules().values():
        lines = path.read_text().splitlines()
        for function in ast.walk(ast.parse(path.read_text())):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                own = isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in OWN
                if own:
                    line, above = lines[node.lineno - 1], lines[node.lineno - 2].strip()
                    if "#" not in line and not above.startswith("#"):
                        silent.append(f"{path.relative_to(REPO)}:{node.lineno}: {line.strip()}")
    assert silent == []


def test_a_file_name_is_one_job():
    """Two modules share a file name only when one is an entry script (``train/<name>.py``) and the
    other the module of the same job it runs, whose docstring names the script."""
    by_name: dict[str, list[Path]] = {}
    for path in project_modules().values():
        if path.name != "__init__.py":
            by_name.setdefault(path.name, []).append(path)
    shared = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    assert "fit.py" in shared  # the entry script and training/fit.py
    for name, paths in shared.items():
        entry = PACKAGE / name
        assert len(paths) == 2 and entry in paths, f"{name}: {[str(p.relative_to(REPO)) for p in paths]}"
        (library,) = [p for p in paths if p != entry]
        doc = ast.get_docstring(ast.parse(library.read_text())) or ""
        assert f"train/{name}" in doc, f"{library.relative_to(REPO)}'s docstring does not say it is train/{name}'s job"


def test_the_facts_the_code_cites_are_in_the_repository():
    for path in project_modules().values():
        text = path.read_text()
        assert "shared/conformance" not in text and "../shared" not in text, path
    assert (REPO / "docs" / "conformance.md").is_file()
