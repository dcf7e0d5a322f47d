"""Whether the optimizer's updates reach the weights.

A weight stored in bfloat16 has an 8-bit significand: a step smaller than half a unit in the
last place (ulp) of the weight rounds back to the old value, and the update is lost. AdamW
moves each weight by about the learning rate per step, so at the paper's lr 5e-7 a plain
AdamW step leaves almost every bfloat16 weight of a Llama bit-identical (float32 weights:
none). Two things guard against that:

* ``train/unchanged_weights`` (``generator/unchanged_weights`` in a two_stage generator
  phase), logged per optimizer step: the share of trainable weights that the step left
  bit-identical. It is a **sampled** share: a fixed, seeded sample of at most ``cap``
  elements per trainable tensor (all elements of smaller tensors) is copied right before
  the step and compared bit for bit after it, each tensor weighted by its size. Steps
  that only accumulate gradients are not counted. About 0 means the updates land. Under an
  optimizer that carries the rounded-off part (Kahan summation, stochastic rounding) a
  bfloat16 weight may stay put for some steps and still learn: there the share is high
  by design and says nothing about lost updates.
* At the start of training, one warning line on stderr when many trainable weights will
  not move: the (sampled) share of trainable weights whose half-ulp, in the dtype they have
  after the precision plugin, exceeds their peak learning rate, not counting the weights of
  such a compensating optimizer.

Under DeepSpeed the optimizer keeps float32 master weights of its own, and the module's
parameters are only their bf16 copies: neither the check nor the metric applies there.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Iterator

import lightning as L
import torch

SAMPLE_CAP = 4096  # elements sampled per trainable tensor: about 1.2M for Llama-3-8B's 291 tensors
LOST_SHARE_WARNING = 0.1  # warn when more than this share of the trainable weights cannot move
FIX = "model.dtype=float32 with trainer.precision=bf16-mixed (float32 master weights, bf16 compute)"
INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(values: torch.Tensor) -> torch.Tensor:
    """The values' bit patterns as integers, so that equality is bit for bit (NaN, -0.0)."""
    return values.view(INT_OF_SIZE[values.element_size()])


def half_ulp(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Half a unit in the last place of each value in ``dtype`` (float32 out; 0 for a zero,
    which any step moves): a step below it rounds back to the value."""
    finfo = torch.finfo(dtype)
    _, exponent = torch.frexp(values.float())  # |v| = m * 2**exponent with 0.5 <= m < 1
    ulp = finfo.eps * torch.pow(2.0, (exponent - 1).float())
    ulp = torch.clamp(ulp, min=finfo.smallest_normal * finfo.eps)  # the subnormal spacing
    return torch.where(values == 0, torch.zeros_like(ulp), ulp / 2)


def compensated(optimizer: torch.optim.Optimizer, group: dict) -> bool:
    """Whether the optimizer keeps low-precision updates for this group: torch-optimi's Kahan
    summation (``kahan_sum``, on unless set false) or torchao's ``bf16_stochastic_round``."""
    return group.get("kahan_sum", False) is not False or bool(getattr(optimizer, "bf16_stochastic_round", False))


class WeightSample:
    """A fixed, seeded sample of element indices per tensor (by name): every element of a
    tensor of at most ``cap`` elements, else ``cap`` drawn with replacement."""

    def __init__(self, cap: int = SAMPLE_CAP, seed: int = 0):
        self.cap, self.seed = cap, seed
        self.indices: dict[str, torch.Tensor] = {}

    def __call__(self, name: str, param: torch.Tensor) -> torch.Tensor:
        """The sampled elements of ``param`` (a copy), the same ones every call."""
        flat = param.detach().reshape(-1)
        if flat.numel() <= self.cap:
            return flat.clone()
        idx = self.indices.get(name)
        if idx is None or idx.device != flat.device:
            generator = torch.Generator().manual_seed(self.seed ^ zlib.crc32(name.encode()))
            idx = torch.randint(flat.numel(), (self.cap,), generator=generator).sort().values.to(flat.device)
            self.indices[name] = idx
        return flat.index_select(0, idx)


def trainable(
    pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
) -> Iterator[tuple[str, torch.Tensor, dict]]:
    """(name, parameter, its param group) of every parameter the optimizer trains."""
    groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    for name, param in pl_module.named_parameters():
        if param.requires_grad and id(param) in groups:
            yield name, param, groups[id(param)]


def peak_lr(group: dict) -> float:
    """The group's rate before any schedule (a warmup starts at 0)."""
    return float(group.get("initial_lr", group["lr"]))


def uses_deepspeed(trainer: L.Trainer) -> bool:
    return type(trainer.strategy).__name__.startswith("DeepSpeed")


class UnchangedWeights(L.Callback):
    """Logs ``train/unchanged_weights``, the sampled share of trainable weights an optimizer
    step left bit-identical, and warns at the start when the precision setting would lose
    the updates (see the module docstring)."""

    def __init__(self, cap: int = SAMPLE_CAP, seed: int = 0, warn_above: float = LOST_SHARE_WARNING):
        self.sample, self.warn_above = WeightSample(cap, seed), warn_above
        self.before: dict[str, tuple[torch.Tensor, int]] | None = None

    def lost_share(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[float, list[str], list[float]]:
        """The estimated share (by size) of the trainable weights that a step of their peak rate
        cannot move (AdamW's step is about lr per weight: lost below half an ulp), with the
        dtypes and rates of those weights."""
        lost = total = 0.0
        dtypes, lrs = set(), set()
        for optimizer in trainer.optimizers:
            for name, param, group in trainable(pl_module, optimizer):
                total += param.numel()
                if compensated(optimizer, group):
                    continue
                share = float((half_ulp(self.sample(name, param), param.dtype) > peak_lr(group)).float().mean())
                if share > 0:
                    lost += share * param.numel()
                    dtypes.add(str(param.dtype).removeprefix("torch."))
                    lrs.add(peak_lr(group))
        return (lost / total if total else 0.0), sorted(dtypes), sorted(lrs)

    def on_fit_start(self, trainer, pl_module):
        # here the precision plugin has converted the module (bf16-true casts every weight) and the optimizer exists
        if uses_deepspeed(trainer) or not trainer.is_global_zero:
            return
        share, dtypes, lrs = self.lost_share(trainer, pl_module)
        if share > self.warn_above:
            print(
                f"warning: {share:.0%} of the trainable weights will not learn: they are {'/'.join(dtypes)} "
                f"(after trainer.precision={trainer.precision}) and an AdamW step of lr "
                f"{'/'.join(f'{lr:g}' for lr in lrs)} is below half a unit in their last place, so it rounds "
                f"away; use {FIX}",
                file=sys.stderr,
            )

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if uses_deepspeed(trainer):
            return
        self.before = self.before or {}  # added to: with several optimizers, each steps in the same batch
        self.before.update(
            (name, (self.sample(name, param), param.numel()))
            for name, param, _ in trainable(pl_module, optimizer)
            if param.grad is not None  # a parameter without a gradient is not being updated
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.before is None:  # no optimizer step in this batch (gradient accumulation)
            return
        before, self.before = self.before, None
        named = dict(pl_module.named_parameters())
        shares = [  # per tensor, weighted by its size; kept on the device (no sync per tensor)
            (bits(self.sample(name, named[name])) == bits(values)).float().mean() * numel
            for name, (values, numel) in before.items()
        ]
        if shares:
            share = torch.stack(shares).sum() / sum(numel for _, numel in before.values())
            prefix = "generator" if getattr(pl_module, "phase", None) == "generator" else "train"
            pl_module.log(f"{prefix}/unchanged_weights", share, on_step=True, on_epoch=False, sync_dist=True)
