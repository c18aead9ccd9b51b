"""Which device a model runs on."""

import torch


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` is CUDA when there is a GPU, else the CPU; anything else as torch reads it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
