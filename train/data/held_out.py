"""The held-out utterances a trained model is checked on after training (quantize, export)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn


def held_out_items(
    data: Any, count: int, max_frames: int | None = None, teacher: nn.Module | None = None, split: str = "val"
) -> list[tuple[str, dict[str, Tensor]]]:
    """The first ``count`` utterances of the data config ``data``'s ``split`` (by name), each
    ``(name, {"mel": (80, T), "audio": (T * 480,) if any, "teacher": ... if cached})``: what the
    scripts that check a model after training (quantize, export) run it on."""
    import hydra

    datamodule = hydra.utils.instantiate(data, teacher=teacher)
    datamodule.prepare_data()
    dataset = datamodule.evaluation_set(split, max_frames)
    return [(dataset.entries[i][0].name, dataset[i]) for i in range(min(len(dataset), int(count)))]
