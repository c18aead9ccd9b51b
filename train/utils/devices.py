"""Which device a model runs on."""

import os

import torch


def local_rank() -> int:
    """This process's rank on its node: torchrun's and Lightning's ``LOCAL_RANK``, or SLURM's ``SLURM_LOCALID``."""
    return int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0)))


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` is this process's own GPU (``cuda:<local rank>``) when there is one, else the CPU;
    anything else as torch reads it."""
    if device == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", local_rank() % max(1, torch.cuda.device_count()))
    return torch.device(device)
