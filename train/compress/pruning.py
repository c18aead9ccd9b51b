"""Structured pruning of the Vocos student with Torch-Pruning's dependency graph.

Two kinds of channel are removed, each as one coupled group that DepGraph traces:

* the residual stream (width ``dim``): the embedding conv's outputs, every LayerNorm, every
  block's depthwise conv, second pointwise layer and layer scale ``gamma``, and the head's input;
* each block's intermediate channels (width ``intermediate_dim``): its first pointwise layer's
  outputs and its second's inputs.

Every block keeps the same widths, so the result is rebuilt as a stock
``VocosBackbone(80, dim', intermediate_dim', num_layers')`` + ``ISTFTHead(dim', n_fft, hop)``
and the pruned weights copied into it: what leaves this module is a plain
:class:`~train.student.model.VocosStudent`, with no Torch-Pruning object inside. Blocks are
dropped (depth pruning) by their measured effect on the loss: the block whose removal costs
least goes first.

:class:`Pruning` runs this inside training, progressively: at each step of ``at_steps`` the
student is cut to the next width of a linear schedule from the parent's widths to the targets,
and the distillation losses recover it until the next cut.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch_pruning as tp
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor, nn

from train.compress.stage import CompressionError, CompressionStage
from train.student.quantized import is_prepared
from vocos_distill.student import VocosStudent

log = logging.getLogger(__name__)
LossFn = Callable[[VocosStudent], Tensor]
IMPORTANCE = ("magnitude", "taylor")


class _Skip(nn.Module):
    """Stands in for a ConvNeXt block while its cost is measured: the residual stream unchanged."""

    def forward(self, x: Tensor, cond_embedding_id: Tensor | None = None) -> Tensor:
        return x


class _Trunk(nn.Module):
    """The student up to the head's linear layer: the part whose channels are pruned. The iSTFT
    after it has no channels to prune and its complex ops are not traceable by DepGraph."""

    def __init__(self, student: VocosStudent) -> None:
        super().__init__()
        self.backbone = student.backbone
        self.out = student.head.out

    def forward(self, mel: Tensor) -> Tensor:
        return self.out(self.backbone(mel))


def importance_of(name: str) -> tp.importance.Importance:
    """Torch-Pruning's group importance: ``magnitude`` (L2 norm of the group's weights) or
    ``taylor`` (first-order: |weight x gradient|, needs gradients of the loss)."""
    if name == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise CompressionError(f"compress.importance={name!r}: choose one of {', '.join(IMPORTANCE)}")


def widths(student: VocosStudent) -> dict[str, int]:
    config = student.config
    return {"dim": config.dim, "intermediate_dim": config.intermediate_dim, "num_layers": config.num_layers}


def check_targets(parent: Mapping[str, int], targets: Mapping[str, int | None], round_to: int = 8) -> dict[str, int]:
    """The targets with ``None`` filled in from the parent, or an error naming the option.

    The head (``Linear(dim, n_fft + 2)`` then the iSTFT) takes any width; widths must be
    multiples of ``round_to`` so that int8 matrix kernels work on whole register blocks.
    """
    resolved = {}
    for key in ("dim", "intermediate_dim", "num_layers"):
        value = targets.get(key)
        value = parent[key] if value is None else int(value)
        if value < 1 or value > parent[key]:
            raise CompressionError(
                f"compress.{key}={value}: must be between 1 and the parent's {key} ({parent[key]}); "
                "pruning removes channels and blocks, it cannot add them"
            )
        if key != "num_layers" and value % round_to and value != parent[key]:
            raise CompressionError(
                f"compress.{key}={value} is not a multiple of compress.round_to={round_to}; "
                f"try {max(round_to, value // round_to * round_to)}"
            )
        resolved[key] = value
    return resolved


def schedule(parent: Mapping[str, int], target: Mapping[str, int], cuts: int, round_to: int = 8) -> list[dict]:
    """Widths after each of ``cuts`` pruning steps: linear from the parent's to the target's,
    rounded to ``round_to``; the last is the target."""
    steps = []
    for i in range(1, cuts + 1):
        step = {}
        for key in ("dim", "intermediate_dim", "num_layers"):
            value = parent[key] + (target[key] - parent[key]) * i / cuts
            unit = 1 if key == "num_layers" else round_to
            step[key] = target[key] if i == cuts else max(target[key], int(round(value / unit)) * unit)
        steps.append(step)
    return steps


def block_costs(student: VocosStudent, loss_fn: LossFn) -> list[float]:
    """How much the loss rises when each ConvNeXt block is skipped (its residual branch removed)."""
    blocks = student.backbone.convnext
    with torch.no_grad():
        base = float(loss_fn(student))
        costs = []
        for i in range(len(blocks)):
            kept = blocks[i]
            blocks[i] = _Skip()
            try:
                costs.append(float(loss_fn(student)) - base)
            finally:
                blocks[i] = kept
    return costs


def drop_blocks(student: VocosStudent, num_layers: int, loss_fn: LossFn) -> VocosStudent:
    """A student with ``num_layers`` blocks: the ones dropped are those whose removal raises the
    loss least, chosen one at a time (costs are measured again after each drop)."""
    student = copy.deepcopy(student)  # cut a copy: the caller's student and optimizer stay intact
    while len(student.backbone.convnext) > num_layers:
        costs = block_costs(student, loss_fn)
        cheapest = min(range(len(costs)), key=costs.__getitem__)
        log.info(
            "dropping ConvNeXt block %d (loss +%.4g without it; others: %s)",
            cheapest,
            costs[cheapest],
            ", ".join(f"{c:.3g}" for c in costs),
        )
        del student.backbone.convnext[cheapest]
    return _rebuild(student)


def prune_widths(
    student: VocosStudent,
    dim: int,
    intermediate_dim: int,
    importance: str = "magnitude",
    example_mel: Tensor | None = None,
    loss_fn: LossFn | None = None,
) -> VocosStudent:
    """A copy of ``student`` with the residual stream cut to ``dim`` channels and every block's
    intermediate layer to ``intermediate_dim``, keeping the most important channels.

    ``importance="taylor"`` needs ``loss_fn`` (its gradients score the channels).
    """
    student = copy.deepcopy(student)  # cut a copy: the caller's student and optimizer stay intact
    if example_mel is None:
        example_mel = torch.randn(1, student.n_mels, 16, device=_device(student))
    trunk = _Trunk(student)
    blocks = list(student.backbone.convnext)
    if importance == "taylor":
        if loss_fn is None:
            raise CompressionError("compress.importance=taylor needs a loss to take gradients of")
        student.zero_grad(set_to_none=True)
        with torch.enable_grad():
            student.requires_grad_(True)
            loss_fn(student).backward()
    scorer = importance_of(importance)
    graph = tp.DependencyGraph().build_dependency(
        trunk,
        example_inputs=example_mel[:1],
        unwrapped_parameters=[(b.gamma, 0) for b in blocks if b.gamma is not None],
        verbose=False,
    )
    cuts = [(student.backbone.embed, tp.prune_conv_out_channels, dim)]
    cuts += [(b.pwconv1, tp.prune_linear_out_channels, intermediate_dim) for b in blocks]
    for layer, prune_fn, keep in cuts:
        total = layer.out_channels if isinstance(layer, nn.Conv1d) else layer.out_features
        if keep == total:
            continue
        group = graph.get_pruning_group(layer, prune_fn, idxs=list(range(total)))
        scores = scorer(group)
        drop = torch.argsort(scores, descending=True)[keep:].tolist()
        graph.get_pruning_group(layer, prune_fn, idxs=sorted(drop)).prune()
    student.zero_grad(set_to_none=True)
    return _rebuild(student)


def prune(
    student: VocosStudent,
    target: Mapping[str, int],
    importance: str = "magnitude",
    example_mel: Tensor | None = None,
    loss_fn: LossFn | None = None,
) -> VocosStudent:
    """Depth first (by measured loss), then widths: a new plain student of the target shape."""
    if target["num_layers"] < len(student.backbone.convnext):
        if student.config.lookahead is not None:  # its blocks carry the look-ahead in a set order
            raise CompressionError(
                f"compress.num_layers={target['num_layers']}: this student looks {student.config.lookahead} frames "
                "ahead (student.lookahead), and dropping its blocks would change that; prune the blocks of the "
                "parent first, then shorten the look-ahead (compress=lookahead), or keep compress.num_layers=null"
            )
        if loss_fn is None:
            raise CompressionError("dropping blocks needs a loss to measure each block's effect")
        student = drop_blocks(student, target["num_layers"], loss_fn)
    if (target["dim"], target["intermediate_dim"]) != (student.config.dim, student.config.intermediate_dim):
        student = prune_widths(student, target["dim"], target["intermediate_dim"], importance, example_mel, loss_fn)
    return student


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _rebuild(student: VocosStudent) -> VocosStudent:
    """A fresh stock student of ``student.config``'s shape holding ``student``'s weights: proof
    that the pruned model is a stock Vocos, and free of anything Torch-Pruning attached."""
    state = {k: v.detach().clone() for k, v in student.state_dict().items()}
    if any(k.startswith("backbone.convnext.") for k in state):  # blocks renumbered after drops
        kept = sorted({int(k.split(".")[2]) for k in state if k.startswith("backbone.convnext.")})
        renumber = {old: new for new, old in enumerate(kept)}
        state = {_renumber(k, renumber): v for k, v in state.items()}
    fresh = VocosStudent.build(student.config).to(_device(student))
    fresh.load_state_dict(state, strict=True)
    return fresh


def _renumber(key: str, renumber: dict[int, int]) -> str:
    parts = key.split(".")
    if key.startswith("backbone.convnext."):
        parts[2] = str(renumber[int(parts[2])])
    return ".".join(parts)


class Pruning(CompressionStage):
    """Prune the training student progressively: at each step of ``at_steps`` it is cut to the
    next shape of a linear schedule ending at (``dim``, ``intermediate_dim``, ``num_layers``);
    ``None`` keeps the parent's value. Channels are ranked by ``importance`` (``magnitude``, or
    ``taylor`` on a training batch's reconstruction loss), blocks by their measured effect on it.

    A cut at step 0 happens in ``setup``, before the optimizers exist and before DDP wraps the
    model, on the first training batch (DDP then copies rank 0's weights to every rank as it
    wraps, so the ranks agree even where their batches ranked channels differently). Later cuts
    happen before that step's update and swap the optimizer's parameters; DDP cannot change
    parameter shapes inside a wrapped model, so with several processes only ``at_steps: [0]``
    is allowed. On resume the checkpoint's shape is
    rebuilt before its weights load (the module's ``on_load_checkpoint``), and cuts already
    behind ``global_step`` are not repeated.
    """

    def __init__(
        self,
        dim: int | None = None,
        intermediate_dim: int | None = None,
        num_layers: int | None = None,
        importance: str = "taylor",
        at_steps: Sequence[int] = (0,),
        round_to: int = 8,
    ) -> None:
        importance_of(importance)  # fail on a bad name at build time
        steps = [int(s) for s in at_steps]
        if not steps or steps != sorted(set(steps)) or steps[0] < 0:
            raise CompressionError(f"compress.at_steps={list(at_steps)}: give increasing steps >= 0, at least one")
        self.requested = {"dim": dim, "intermediate_dim": intermediate_dim, "num_layers": num_layers}
        self.importance = importance
        self.at_steps = steps
        self.round_to = round_to
        self.plan: list[dict] = []

    next_stage = "compress=qat student.init_from={last} (with this run's experiment and data options)"

    def check(self, parent: VocosStudent) -> None:
        """Refuse targets this parent cannot be pruned to (before anything trains)."""
        if is_prepared(parent):
            raise CompressionError(
                "compress=prune: student.init_from holds a QAT (fake-quantised) student; prune before "
                "quantization-aware training (distil -> prune -> QAT), from the fp32 parent"
            )
        check_targets(widths(parent), self.requested, self.round_to)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not self.plan:  # computed once, from the parent (setup runs again for fit after validate)
            parent = widths(pl_module.generator)
            target = check_targets(parent, self.requested, self.round_to)
            if 0 < trainer.max_steps <= self.at_steps[-1]:
                raise CompressionError(
                    f"compress.at_steps={self.at_steps}: the last cut must come before trainer.max_steps="
                    f"{trainer.max_steps}, with steps left to recover"
                )
            if trainer.world_size > 1 and self.at_steps != [0]:
                raise CompressionError(
                    f"compress.at_steps={self.at_steps} with {trainer.world_size} processes: DDP cannot change "
                    "parameter shapes during a run; use compress.at_steps=[0] or train on one device"
                )
            self.plan = schedule(parent, target, len(self.at_steps), self.round_to)
            log.info("pruning %s -> %s at steps %s (%s importance)", parent, target, self.at_steps, self.importance)
        if stage == "fit" and self.at_steps[0] == 0 and trainer.ckpt_path is None:
            batch = next(iter(trainer.datamodule.train_dataloader()))
            self.cut(trainer, pl_module, 0, batch)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_step in self.at_steps:
            self.cut(trainer, pl_module, trainer.global_step, batch)

    def cut(self, trainer: Trainer, pl_module: LightningModule, step: int, batch: Any) -> None:
        """Prune to the shape planned for ``step``, unless the student is already that small."""
        shape = self.plan[self.at_steps.index(step)]
        current = widths(pl_module.generator)
        if all(current[k] <= shape[k] for k in shape):
            return  # this cut is behind us (a resumed run, or step 0 done in setup)
        shape = {k: min(current[k], shape[k]) for k in shape}
        device = _device(pl_module.generator)
        batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}

        def loss_fn(student: VocosStudent) -> Tensor:
            return pl_module.reconstruction_loss(student(batch["mel"]), pl_module.targets(batch))[0]

        student = prune(pl_module.generator, shape, self.importance, batch["mel"][:1], loss_fn)
        replace_generator(pl_module, student)
        log.info(
            "step %d: pruned to %s (%d parameters)", step, widths(student), sum(p.numel() for p in student.parameters())
        )


def replace_generator(pl_module: LightningModule, student: VocosStudent) -> None:
    """Swap the training student for a new one and point its optimizer at the new parameters.

    The optimizer's moments belong to the old shapes and are dropped; its learning-rate
    schedule goes on where it was.
    """
    pl_module.generator = student.to(_device(pl_module.generator)).train()
    if pl_module._trainer is None or not pl_module.trainer.optimizers:
        return
    optimizer = pl_module.trainer.optimizers[0]
    optimizer.state.clear()
    params = list(student.parameters())
    for i, group in enumerate(optimizer.param_groups):
        group["params"] = params if i == 0 else []
