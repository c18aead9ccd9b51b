"""Defaults are written once: in the signature of what a config node builds.

The schemas are generated from the signatures (``train/utils/schema.py``), the YAML lists only
what differs, and every composed config is walked: a value that restates a default, or one that
contradicts it (interpolations resolved), fails here."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import hydra.utils
import pytest
from helpers import CONF, compose
from omegaconf import DictConfig, ListConfig, OmegaConf

from train.utils.schema import SCHEMAS, signature_of

ROOTS = {  # root config -> the overrides its required options need to compose and resolve
    "train": [],
    "prepare": [],
    "evaluate": ["checkpoint=x.ckpt"],
    "export": ["checkpoint=x.ckpt"],
    "quantize": ["checkpoint=x.ckpt"],
    "publish": ["release=x", "repo_id=a/b"],
}
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def ours(target: str) -> bool:
    """A target this project defines: its signature is where its defaults are written."""
    return target.startswith(("train.", "vocos_distill."))


def real_signature(target: str) -> inspect.Signature:
    return inspect.signature(hydra.utils.get_object(target))


def plain(value: Any) -> Any:
    """Config values and Python defaults in one form: lists for sequences, floats for numbers."""
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def targets(node: Any, path: str = "") -> list[tuple[str, DictConfig]]:
    """Every node of a config that builds something (``_target_``), with its dotted path."""
    found = []
    if isinstance(node, DictConfig):
        if "_target_" in node:
            found.append((path, node))
        for key in node:
            child = node._get_node(key)
            if isinstance(child, DictConfig | ListConfig):
                found += targets(child, f"{path}.{key}".lstrip("."))
    elif isinstance(node, ListConfig):
        for i, child in enumerate(node):
            found += targets(child, f"{path}[{i}]")
    return found


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_each_schema_is_its_targets_signature(name):
    """The schemas read the signatures from source (so composing imports no torch): what they read
    is what ``inspect.signature`` of the imported target says, parameter by parameter."""
    schema = SCHEMAS[name]
    real = dict(real_signature(schema.where or schema.target).parameters)
    if schema.shape:
        real |= {
            f.name: inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default)
            for f in dataclasses.fields(hydra.utils.get_object(schema.shape))
        }
    real = {k: p for k, p in real.items() if k not in schema.exclude and p.kind is not p.VAR_KEYWORD}
    static = signature_of(schema).parameters
    assert list(static) == list(real)
    for key, parameter in real.items():
        assert plain(static[key].default) == plain(parameter.default), f"{schema.target}({key}=...)"


@pytest.mark.parametrize("root", sorted(ROOTS))
def test_no_composed_value_contradicts_a_default(root, tmp_path):
    """In each entry point's config as composed without an experiment, every node that builds a
    target of this project says what the target's signature says, interpolations resolved, except
    where the signature leaves an option off (None, or nothing) and the config supplies it (a path,
    a folder list, a module)."""
    cfg = compose(ROOTS[root], tmp_path, config_name=root)
    checked = 0
    for path, node in targets(cfg):
        if not ours(node._target_):
            continue
        parameters = real_signature(node._target_).parameters
        for key in node:
            if key.startswith("_") or key not in parameters or OmegaConf.is_missing(node, key):
                continue
            default = parameters[key].default
            if default is inspect.Parameter.empty or default is None or default == ():
                continue
            value = node[key]
            assert plain(value) == plain(default), (
                f"{root}: {path}.{key} is {plain(value)!r} but {node._target_} says {default!r}: change the "
                "signature, not the config"
            )
            checked += 1
    assert checked > 0 or root == "publish"  # publish builds nothing of this project's


def _yaml_nodes(path: Path) -> list[tuple[str, dict, str]]:
    """``(where, node, target)`` for each node of a config file that builds something: the file
    itself when it extends a schema (``/schema/<name>@_here_``), and every ``_target_`` node in it."""
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    found = []
    for entry in raw.get("defaults") or []:
        if isinstance(entry, str) and entry.startswith("/schema/"):
            name, _, package = entry.removeprefix("/schema/").partition("@")
            node = raw if package == "_here_" else raw.get(package) or {}
            found.append((package, node, SCHEMAS[name].target))

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if "_target_" in node:
                found.append((where, node, node["_target_"]))
            for key, child in node.items():
                walk(child, f"{where}.{key}".lstrip("."))
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, f"{where}[{i}]")

    if not found or found[0][0] != "_here_":
        walk(raw, "")
    else:  # the file is the node: walk what it holds
        for key, child in raw.items():
            walk(child, key)
    return found


def test_no_yaml_restates_a_default():
    """A value written in YAML that equals the signature's default is written twice: the YAML
    lists only what differs (experiments too: they hold their changes)."""
    restated = []
    for path in sorted(CONF.rglob("*.yaml")):
        for where, node, target in _yaml_nodes(path):
            try:
                parameters = real_signature(target).parameters
            except (ImportError, AttributeError, ValueError):  # a class path that resolves at run time only
                continue
            for key, value in node.items():
                if key.startswith("_") or key == "defaults" or key not in parameters or "${" in str(value):
                    continue
                default = parameters[key].default
                if default is not inspect.Parameter.empty and plain(value) == plain(default):
                    place = "" if where == "_here_" else f"{where}."
                    restated.append(f"{path.relative_to(CONF)}: {place}{key}: {value!r}")
    assert not restated, "written in YAML and in the signature alike:\n" + "\n".join(restated)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_an_experiment_holds_only_its_changes(experiment, tmp_path):
    """Each value an experiment sets differs from what the config would be without it."""
    raw = OmegaConf.to_container(OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml"), resolve=False)
    base_overrides = []  # the experiment's own defaults list (its parent, its group choices), not its values
    for entry in raw.get("defaults") or []:
        if isinstance(entry, str):
            base_overrides.append(f"experiment={entry}")
        else:
            ((key, choice),) = entry.items()
            group = key.removeprefix("override /")
            base_overrides.append(f"~{group}" if choice is None else f"{group}={choice}".replace("'", ""))
    base = compose(base_overrides, tmp_path)

    def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(node, dict) and "_target_" not in node:
            return {k: v for key, child in node.items() for k, v in leaves(child, f"{prefix}{key}.").items()}
        return {prefix.rstrip("."): node}

    same = []
    for key, value in leaves({k: v for k, v in raw.items() if k != "defaults"}).items():
        if "${" in str(value):
            continue
        before = OmegaConf.select(base, key, default="<absent>", throw_on_missing=False)
        if before != "<absent>" and plain(before) == plain(value):
            same.append(f"{key}: {value!r}")
    assert not same, f"conf/experiment/{experiment}.yaml repeats what the config already says: {same}"


def test_a_wrong_type_is_refused_naming_the_key(tmp_path):
    """The generated schemas type the groups: Hydra refuses a value of the wrong type, naming it."""
    from hydra.errors import ConfigCompositionException

    for override, key in (("trainer.max_steps=abc", "max_steps"), ("data.batch_size=two", "batch_size"),
                          ("student.amplitude_prior=maybe", "amplitude_prior")):  # fmt: skip
        with pytest.raises(ConfigCompositionException) as refused:
            compose(["experiment=tiny", override], tmp_path)
        assert key in str(refused.value.__cause__ or refused.value)
    cfg = compose(["experiment=tiny", "data.val_fraction=0.1"], tmp_path)  # any parameter, without `+`
    assert cfg.data.val_fraction == 0.1
