"""What the configs in ``conf/`` need before Hydra composes them: resolvers and typed schemas.

Kept free of torch and Lightning, so that an entry point's ``--help`` answers at once.
"""

import datetime
import os
import secrets
import sys
from pathlib import Path

from omegaconf import OmegaConf

from train.utils import schema

MARKER = ".project-root"  # marks a checkout's top folder (as lightning-hydra-template's rootutils does)
ROOT_ENV = "PROJECT_ROOT"


def project_root() -> Path:
    """The checkout an entry point runs from, whichever checkout the package was installed from:
    ``$PROJECT_ROOT`` if set, else the nearest folder holding ``.project-root`` above the entry
    script (``python <checkout>/train/fit.py``), else above the working directory, else the
    working directory itself. Runs, caches and releases go under it (``conf/paths``)."""
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV]).expanduser().resolve()
    script = Path(sys.argv[0]).resolve().parent if sys.argv and sys.argv[0] not in ("", "-c", "-m") else None
    for start in [s for s in (script, Path.cwd()) if s is not None]:
        for folder in (start, *start.parents):
            if (folder / MARKER).is_file():
                return folder
    return Path.cwd()


def run_name() -> str:
    """A run folder's name, unique to the run and the same in all of its processes.

    Under a SLURM job (not an interactive shell), the job id, so that every task of a
    multi-node job and a requeued job come back to one folder; under torchrun with a
    rendezvous id, that id; otherwise the time and a random suffix (two runs started in the
    same second get two folders).
    """
    env = os.environ
    if env.get("SLURM_JOB_ID") and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
            return f"slurm-{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
        return f"slurm-{env['SLURM_JOB_ID']}"
    if env.get("TORCHELASTIC_RUN_ID", "none") != "none":
        return f"torchrun-{env['TORCHELASTIC_RUN_ID']}"
    return f"{datetime.datetime.now():%Y-%m-%d_%H-%M-%S}-{secrets.token_hex(3)}"


def stage_group(task_name: str, stage: str) -> str:
    """A compression stage's run group: ``<task>-<stage>``, once (``task_name=x-qat`` with
    ``compress=qat`` is ``x-qat`` too, not ``x-qat-qat``)."""
    task_name, stage = str(task_name), str(stage)
    return task_name if task_name.endswith(f"-{stage}") else f"{task_name}-{stage}"


if not OmegaConf.has_resolver("default"):
    # ${default:module.function,parameter}: that parameter's default, read from the signature (a
    # setting that several entry points share, stated once where the code uses it)
    OmegaConf.register_new_resolver(
        "default", lambda target, name: schema.static_signature(target).parameters[name].default
    )
if not OmegaConf.has_resolver("stage_group"):
    OmegaConf.register_new_resolver("stage_group", stage_group)
if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(project_root()))
if not OmegaConf.has_resolver("run_name"):
    # cached: every mention in one config is the same name (and Hydra's launchers copy the cache)
    OmegaConf.register_new_resolver("run_name", run_name, use_cache=True)

schema.register()
