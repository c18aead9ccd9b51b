"""Typed schemas of the config nodes users override most, generated from the signatures they configure.

A default is written once: in the signature of the function or class a node builds. hydra-zen's
``builds(target, populate_full_signature=True)`` turns that signature into a structured config
(every parameter, its type as far as OmegaConf can check one, its default), and each group's
YAML extends it (``defaults: [/schema/<name>@_here_, _self_]``) listing only what differs. So
Hydra refuses ``trainer.max_steps=abc`` naming the key and the type before anything runs, any
parameter can be overridden without ``+``, and YAML and code cannot disagree
(``tests/test_config.py`` holds every composed config to that, interpolations resolved).

The signatures are read from the targets' source files (:func:`static_signature`), not by
importing them: composing a config, ``--help`` included, stays free of torch and Lightning.
``tests/test_config.py`` checks that reading against ``inspect.signature`` of each imported target.
A student's shape is :class:`vocos_distill.config.StudentConfig`'s, read the same way.
"""

from __future__ import annotations

import ast
import collections.abc
import importlib.util
import inspect
import typing
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra_zen import builds
from omegaconf import MISSING


@dataclass(frozen=True)
class Schema:
    """The schema registered as ``/schema/<name>``: a node that builds ``target``, defined in the
    module ``where`` (when ``target`` is a re-export); ``exclude`` lists the parameters the code
    passes itself (a module's generator, a trainer's loggers); ``shape``: also the fields of this
    dataclass, passed through ``**kwargs``; ``partial``: a factory the code calls later (``_partial_``)."""

    target: str
    where: str | None = None
    exclude: tuple[str, ...] = ()
    shape: str | None = None
    partial: bool = False


SCHEMAS = {
    "trainer": Schema("lightning.pytorch.Trainer", "lightning.pytorch.trainer.trainer.Trainer",
                      exclude=("logger", "callbacks")),
    "data": Schema("train.data.datamodule.VocoderDataModule", exclude=("teacher",)),
    "flow": Schema("train.data.flow_mels.FlowMels"),
    "module": Schema("train.training.module.VocoderDistillation", exclude=("generator", "parent")),
    "student": Schema("train.student.model.build_student", shape="vocos_distill.config.StudentConfig"),
    "teacher": Schema("train.s3gen.teacher.load_teacher"),
    "scheduler": Schema("train.training.module.warmup_cosine", exclude=("optimizer",), partial=True),
    "floor": Schema("train.evaluation.griffin_lim.GriffinLim"),
    "checkpoints": Schema("train.training.checkpoints.RunCheckpoints"),
    "progress": Schema("train.training.step_progress.StepProgressBar"),
    "prune": Schema("train.compress.pruning.Pruning"),
    "lookahead": Schema("train.compress.lookahead.Lookahead"),
    "qat": Schema("train.compress.qat.QuantizationAware"),
    "metrics": Schema("train.evaluation.metrics.QualityMetrics"),
    "cost": Schema("train.evaluation.cost.CostSettings"),
}  # fmt: skip
# What an annotation may name; anything else (a class of the target's own library) stands as Any
NAMES = {
    **{name: getattr(typing, name) for name in ("Any", "Optional", "Union", "Literal")},
    **{name: getattr(collections.abc, name) for name in ("Sequence", "Mapping", "Callable", "Iterable")},
    "Path": Path,
}


def source_of(module: str) -> Path:
    """The source file of ``module``, found without importing it (nor its packages)."""
    top, *parts = module.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"no package {top!r} on the path (for {module})")
    folder = Path(next(iter(spec.submodule_search_locations)))
    candidates = [folder.joinpath(*parts).with_suffix(".py"), folder.joinpath(*parts, "__init__.py")]
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        raise ModuleNotFoundError(f"no source file for {module} under {folder}")
    return found


def _constants(tree: ast.Module, follow: bool = True) -> dict[str, Any]:
    """A module's top-level ``NAME = <literal>`` assignments (defaults may name them), and the
    literal constants it imports by name from another module (``from m import NAME``)."""
    found: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                found[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
        elif follow and isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            try:
                theirs = _constants(ast.parse(source_of(node.module).read_text()), follow=False)
            except ModuleNotFoundError:
                continue
            found |= {alias.asname or alias.name: theirs[alias.name] for alias in node.names if alias.name in theirs}
    return found


def _value(node: ast.expr, constants: dict[str, Any], where: str) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        if isinstance(node, ast.Name) and node.id in constants:
            return constants[node.id]
    raise TypeError(f"{where}: a default must be a literal or a module constant; found {ast.unparse(node)}")


def _annotation(node: ast.expr | None) -> Any:
    if node is None:
        return Any
    try:
        return eval(ast.unparse(node), {"__builtins__": __builtins__, **NAMES})  # noqa: S307  (a type expression)
    except (NameError, AttributeError, TypeError):
        return Any


@cache
def static_signature(qualified: str) -> inspect.Signature:
    """The signature of ``module.Name`` (a function, a class's ``__init__`` without ``self``, or a
    dataclass's fields), read from its source: literal defaults (or module constants), annotations
    evaluated where they name builtins and ``typing`` forms, else ``Any``."""
    module, _, name = qualified.rpartition(".")
    tree = ast.parse(source_of(module).read_text())
    constants = _constants(tree)
    node = next((n for n in tree.body if getattr(n, "name", None) == name), None)
    if isinstance(node, ast.ClassDef):
        init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
        if init is None:  # a dataclass: its annotated fields
            params = [
                inspect.Parameter(
                    field.target.id,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=inspect.Parameter.empty if field.value is None else _value(field.value, constants, name),
                    annotation=_annotation(field.annotation),
                )
                for field in node.body
                if isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name)
            ]
            return inspect.Signature(params)
        node, skip = init, 1
    elif isinstance(node, ast.FunctionDef):
        skip = 0
    else:
        raise LookupError(f"no function or class {name} in {source_of(module)}")
    args = node.args
    positional = args.posonlyargs + args.args
    defaults = [inspect.Parameter.empty] * (len(positional) - len(args.defaults)) + list(args.defaults)
    kinds = [inspect.Parameter.POSITIONAL_OR_KEYWORD] * len(positional)
    pairs = list(zip(positional, defaults, kinds, strict=True))[skip:]
    pairs += [(a, d or inspect.Parameter.empty, inspect.Parameter.KEYWORD_ONLY)
              for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)]  # fmt: skip
    return inspect.Signature(
        [
            inspect.Parameter(
                arg.arg,
                kind,
                default=default if default is inspect.Parameter.empty else _value(default, constants, qualified),
                annotation=_annotation(arg.annotation),
            )
            for arg, default, kind in pairs
        ]
    )


def signature_of(schema: Schema) -> inspect.Signature:
    """The parameters a schema lists: its target's, less the excluded, plus the shape's fields."""
    own = static_signature(schema.where or schema.target)
    params = [p for p in own.parameters.values() if p.name not in schema.exclude and p.kind not in (p.VAR_KEYWORD,)]
    if schema.shape:
        params += [p for p in static_signature(schema.shape).parameters.values() if p.name not in own.parameters]
    return inspect.Signature([p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params])


def build(schema: Schema) -> type:
    """The structured config of ``schema``: hydra-zen's ``builds`` of its signature, ``_target_`` its target."""

    def target(**kwargs: Any) -> None:
        raise NotImplementedError  # stands in for the real target, which is not imported here

    signature = signature_of(schema)
    target.__signature__ = signature
    target.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    target.__module__, _, target.__qualname__ = schema.target.rpartition(".")
    target.__name__ = target.__qualname__
    # a partial config leaves out the parameters without defaults unless they are named: name them (???)
    required = {p.name: MISSING for p in signature.parameters.values() if p.default is inspect.Parameter.empty}
    return builds(target, populate_full_signature=True, zen_partial=schema.partial or None,
                  **(required if schema.partial else {}))  # fmt: skip


def register() -> None:
    store = ConfigStore.instance()
    for name, schema in SCHEMAS.items():
        store.store(group="schema", name=name, node=build(schema))
