"""Defaults are written once in substance: a group's YAML, its typed schema and the target's own
signature say the same value for every option they all name."""

import dataclasses
import inspect

import hydra.utils
import pytest
from helpers import REPO
from omegaconf import MISSING, OmegaConf

from train.training import module
from train.utils import schema

GROUPS = {
    "trainer": ("trainer/default.yaml", schema.TrainerSchema),
    "data": ("data/bundled.yaml", schema.DataSchema),
    "module": ("module/gan.yaml", schema.ModuleSchema),
    "student": ("student/vocos.yaml", schema.StudentSchema),
}
# a signature's None standing for a mapping the module names (mutable defaults cannot be in a signature)
NONE_MEANS = {
    ("module", "target_weights"): module.TARGET_WEIGHTS,
    ("module", "discriminator_weights"): module.DISCRIMINATOR_WEIGHTS,
}


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else MISSING


def _same(a, b) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return list(a) == list(b)
    return a == b or str(a) == str(b)  # "32" precision written as 32 in YAML


@pytest.mark.parametrize("group", GROUPS)
def test_yaml_schema_and_signature_agree_on_every_default(group):
    path, node = GROUPS[group]
    yaml = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / path), resolve=False)
    signature = inspect.signature(hydra.utils.get_method(node._target_)) if group != "trainer" else None
    compared = 0
    for field in dataclasses.fields(node):
        default = _default(field)
        if field.name == "_target_":
            assert yaml["_target_"] == default
            continue
        if default is MISSING:  # filled by the YAML (a config node or a path): nothing written twice
            continue
        value = yaml.get(field.name, default)
        if "${" not in str(value):  # an interpolation: resolved from another group
            assert _same(value, default), f"conf/{path}: {field.name}: {value!r}, the schema says {default!r}"
            compared += 1
        if signature is not None and field.name in signature.parameters:
            own = signature.parameters[field.name].default
            if own is not inspect.Parameter.empty:
                own = NONE_MEANS.get((group, field.name), own) if own is None else own
                assert _same(own, default), f"{node._target_}({field.name}={own!r}); the schema says {default!r}"
    assert compared >= 5
