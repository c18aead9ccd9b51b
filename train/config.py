"""OmegaConf resolvers used by the configs in ``conf/``, and how config values become objects."""

from pathlib import Path

import torch
from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]

if not OmegaConf.has_resolver("repo_root"):
    OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` is CUDA when there is a GPU, else the CPU; anything else as torch reads it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
