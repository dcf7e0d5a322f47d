"""Learning-rate schedules over the optimizer steps of SSO's iterations (``scheduler=cosine|linear``).

The shapes are the ones Hugging Face's trainers (and so LLaMA-Factory, the authors' trainer) use:
linear warmup from 0 over W steps, then cosine or linear decay to 0 at step T. A phase's data is
regenerated every iteration, so its number of steps is known only when its epoch starts; the
schedule is told then, and reads its position from the optimizer step count.

``across_iterations``:

* ``restart``: every epoch (one phase of an iteration) runs the whole schedule over its own
  steps, as the authors' script does by training each iteration as a fresh run;
* ``continue``: one schedule per phase over the whole run, T = the phase's steps in its first
  iteration x the number of iterations (later iterations, whose kept data differs a little in
  size, are placed on that grid; steps past T stay at the end value).

Warmup: ``warmup_steps`` when set, else ceil(``warmup_ratio`` x T), as Hugging Face computes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import lightning as L
from torch.optim.lr_scheduler import LambdaLR

from sso_lightning.errors import ConfigError


def cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def linear(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


SHAPES = {"cosine": cosine, "linear": linear}
ACROSS = ("restart", "continue")


@dataclass
class Segment:
    """Where the current epoch sits in its schedule: optimizer step ``start`` of the run is step
    ``offset`` of a schedule of ``total`` steps."""

    start: int = 0
    offset: int = 0
    total: int = 1


class LearningRateSchedule(L.Callback):
    """Sets the schedule's position at every epoch start (a plain class, not a dataclass: the
    Trainer's config would turn a dataclass callback into a config node)."""

    def __init__(
        self,
        shape: str = "cosine",
        warmup_ratio: float = 0.0,
        warmup_steps: int | None = None,
        across_iterations: str = "restart",
    ):
        self.shape, self.warmup_ratio, self.warmup_steps = shape, warmup_ratio, warmup_steps
        self.across_iterations = across_iterations
        self.segment = Segment()
        self.done: dict[str, tuple[int, int]] = {}  # phase -> (steps taken so far, its schedule's total)
        self.phase = ""  # the phase of the running epoch
        if self.shape not in SHAPES:
            raise ConfigError(f"scheduler.shape={self.shape} is not valid (valid: {', '.join(SHAPES)})")
        if self.across_iterations not in ACROSS:
            raise ConfigError(
                f"scheduler.across_iterations={self.across_iterations} is not valid (valid: {', '.join(ACROSS)})"
            )
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"scheduler.warmup_ratio must be in [0, 1) (got {self.warmup_ratio})")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError(f"scheduler.warmup_steps must be >= 0 or null (got {self.warmup_steps})")

    def scheduler(self, optimizer) -> dict:
        """The Lightning scheduler config: stepped after every optimizer step."""
        return {"scheduler": LambdaLR(optimizer, self.factor), "interval": "step", "name": "train/lr"}

    def factor(self, step: int) -> float:
        """The learning-rate multiplier for optimizer step ``step`` of the run."""
        total = self.segment.total
        at = min(self.segment.offset + step - self.segment.start, total)
        warmup = self.warmup_steps if self.warmup_steps is not None else math.ceil(self.warmup_ratio * total)
        return SHAPES[self.shape](at, warmup, total)

    def on_train_epoch_start(self, trainer, pl_module):
        steps = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
        self.phase = pl_module.phase
        if self.across_iterations == "restart":
            self.segment = Segment(trainer.global_step, 0, steps)
        else:
            iterations = trainer.max_epochs // pl_module.phases_per_iteration
            taken, total = self.done.get(self.phase, (0, steps * iterations))
            self.segment = Segment(trainer.global_step, taken, total)
        # the optimizer already holds the rate LambdaLR set before this epoch's steps were known
        for scheduler_config in trainer.lr_scheduler_configs:
            scheduler = scheduler_config.scheduler
            for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
                group["lr"] = base * self.factor(trainer.global_step)

    def on_train_epoch_end(self, trainer, pl_module):
        """(The phase is the one read at the epoch's start: the next phase may already be set.)"""
        if self.across_iterations == "continue":
            taken = self.segment.offset + trainer.global_step - self.segment.start
            self.done[self.phase] = (taken, self.segment.total)

    def state_dict(self) -> dict:
        """A run resumed inside an epoch goes on with its segment (Lightning does not start the epoch again)."""
        return {"segment": self.segment, "done": dict(self.done), "phase": self.phase}

    def load_state_dict(self, state: dict) -> None:
        self.segment, self.done, self.phase = state["segment"], state["done"], state["phase"]
