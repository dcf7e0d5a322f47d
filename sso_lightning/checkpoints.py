"""Checkpoints, so that a run survives a crash or a preemption (docs/resume.md).

Lightning writes them (``trainer.save_checkpoint``: weights, optimizer and scheduler state, loop
progress, the DataModule's loader position and every callback's ``state_dict``); this module
decides when and where, as ``<run dir>/checkpoints/step-<optimizer steps>.ckpt``:

* at the end of every phase (epoch), once the next phase's data is generated and the policy
  evaluated, so that a resumed run trains on that snapshot instead of generating it again;
* every ``checkpoint.every_n_steps`` optimizer steps, before the step (nothing of it logged yet);
* when a signal stops the run (``preemption.py``), at the step boundary where it stops.

Each file is streamed to a temp file beside it and renamed (never half of one); the last
``checkpoint.keep`` stay. ``RunState`` adds what Lightning does not keep.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from sso_lightning.atomic import stream_atomic
from sso_lightning.distributed import Ranks, gather
from sso_lightning.errors import ConfigError

CHECKPOINT_DIR = "checkpoints"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` straight into a temp file beside the target, then a rename: Lightning's
    default holds the whole checkpoint in memory and moves it from /tmp, which a kill can cut."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        stream_atomic(Path(path), lambda f: torch.save(checkpoint, f))


@dataclass
class Checkpoints:
    """``conf/config.yaml``'s ``checkpoint`` options and the directory they apply to."""

    path: Path
    every_n_steps: int | None = None
    keep: int = 2

    def __post_init__(self):
        if self.keep < 1:
            raise ConfigError(f"checkpoint.keep={self.keep} is not valid: it must be an integer >= 1")
        if self.every_n_steps is not None and self.every_n_steps < 1:
            raise ConfigError(
                f"checkpoint.every_n_steps={self.every_n_steps} is not valid: it must be an integer >= 1, or null"
            )
        self.path = Path(self.path)

    def save(self, trainer: L.Trainer) -> None:
        """One checkpoint of the state now, unless one of this step is there (the same state: steps
        only advance by training); then the oldest beyond ``keep`` go."""
        target = self.path / f"step-{trainer.global_step:08d}.ckpt"
        if target.exists():
            return
        trainer.save_checkpoint(target, weights_only=False)
        if trainer.is_global_zero:
            for old in self.saved()[: -self.keep]:
                old.unlink()

    def saved(self) -> list[Path]:
        return sorted(self.path.glob("step-*.ckpt"))

    def latest(self) -> Path | None:
        saved = self.saved()
        return saved[-1] if saved else None

    def callbacks(self, run_dir: Path) -> tuple[L.Callback, L.Callback, L.Callback]:
        """(first in the callback list, last in it, anywhere): see train.py for the order."""
        return StepCheckpoints(self), PhaseCheckpoints(self), RunState(run_dir)


class StepCheckpoints(L.Callback):
    """Every ``every_n_steps`` optimizer steps, at the start of the batch that begins the next
    step; first among the callbacks, so that nothing of that step is logged yet."""

    def __init__(self, checkpoints: Checkpoints):
        self.checkpoints, self.saving = checkpoints, False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        every = self.checkpoints.every_n_steps
        starts_step = batch_idx % trainer.accumulate_grad_batches == 0
        if every and starts_step and trainer.global_step and trainer.global_step % every == 0:
            self.saving = True
            try:
                self.checkpoints.save(trainer)
            finally:
                self.saving = False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        """Lightning's loops take a mid-epoch checkpoint for one saved at the end of a batch, before
        that batch's logging step is counted, and count it when they resume; here it is counted."""
        if self.saving:
            checkpoint["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"] -= 1


class PhaseCheckpoints(L.Callback):
    """At the end of every phase, after the callbacks that make the next phase's data and log
    the epoch's metrics; and when a signal stops the run between two optimizer steps."""

    def __init__(self, checkpoints: Checkpoints):
        self.checkpoints = checkpoints

    def on_train_epoch_end(self, trainer, pl_module):
        self.checkpoints.save(trainer)

    def on_exception(self, trainer, pl_module, exception):
        """Lightning stops for a signal after a batch (an epoch's last one included: it runs the
        epoch's end first, where the checkpoint is saved already). Inside a gradient accumulation
        the accumulated gradients cannot be saved, so the last checkpoint stands."""
        inside_accumulation = (
            trainer.fit_loop.epoch_loop.batch_progress.current.completed % trainer.accumulate_grad_batches
        )
        if isinstance(exception, SIGTERMException) and not inside_accumulation:
            self.checkpoints.save(trainer)


class RunState(L.Callback):
    """What a checkpoint holds beyond Lightning's state: every rank's random number generators
    (generation samples from torch's), the metrics CSV as logged so far (the resumed run goes on
    from exactly those rows), the W&B run id (it resumes the same run) and the snapshots written
    so far (later ones are stale and made again)."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.ranks = run_dir, Ranks()

    def setup(self, trainer, pl_module, stage):
        self.ranks = Ranks(trainer.global_rank, trainer.world_size)
        self.trainer = trainer

    def state_dict(self) -> dict:
        rng = gather([_collect_rng_states()], self.ranks)  # every rank saves; rank 0's file keeps all
        csv, wandb_id = None, None
        for logger in self.trainer.loggers:
            if isinstance(logger, CSVLogger) and self.trainer.is_global_zero:
                logger.save()  # flush what was logged, so the file holds every row so far
                metrics = Path(logger.log_dir) / "metrics.csv"
                csv = metrics.read_text() if metrics.exists() else ""
            if isinstance(logger, WandbLogger):
                wandb_id = logger.version
        snapshots = sorted(p.name for p in (self.run_dir / "data").glob("*.jsonl"))
        return {"rng": rng, "metrics_csv": csv, "wandb_id": wandb_id, "snapshots": snapshots}

    def load_state_dict(self, state: dict) -> None:
        if len(state["rng"]) != self.ranks.world_size:
            raise ConfigError(
                f"this run was checkpointed with {len(state['rng'])} process(es); resume it with as many "
                f"(now {self.ranks.world_size})"
            )
        _set_rng_states(state["rng"][self.ranks.global_rank])


@dataclass(frozen=True)
class ResumePoint:
    """The latest checkpoint of a run directory and what must be in place before the Trainer exists."""

    path: Path
    metrics_csv: str | None
    wandb_id: str | None
    snapshots: list[str]

    @classmethod
    def latest(cls, checkpoints: Checkpoints) -> ResumePoint | None:
        path = checkpoints.latest()
        if path is None:
            return None
        # mmap: only the small run state is read, not the weights
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)["callbacks"][RunState.__name__]
        return cls(path, state["metrics_csv"], state["wandb_id"], state["snapshots"])
