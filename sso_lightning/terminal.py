"""What a run shows on the terminal: tqdm progress bars on stderr in one style (stdout holds only
the run's table and directory), and Lightning's chatter that no user acts on held back."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm


def progress(trainer: L.Trainer, total: int, description: str) -> Tqdm:
    """A bar in Lightning's own style, shown when the trainer shows its progress bar."""
    return Tqdm(
        total=total,
        desc=description,
        disable=trainer.progress_bar_callback is None,
        leave=False,
        file=sys.stderr,
        dynamic_ncols=True,
    )


class StderrProgressBar(TQDMProgressBar):
    """Lightning's tqdm bars, on stderr like the generation bars: stdout holds only the run's table.
    Lightning builds each bar with ``file=sys.stdout``, so it is built while stdout is stderr."""

    def init_sanity_tqdm(self) -> Tqdm:
        with redirect_stdout(sys.stderr):
            return super().init_sanity_tqdm()

    def init_train_tqdm(self) -> Tqdm:
        with redirect_stdout(sys.stderr):
            return super().init_train_tqdm()

    def init_validation_tqdm(self) -> Tqdm:
        with redirect_stdout(sys.stderr):
            return super().init_validation_tqdm()


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Hold back what Lightning says that no user acts on: its info lines (accelerator banner,
    litlogger tip, "fit stopped") and torch's deprecation of the LeafSpec its own _pytree uses."""
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = rank_zero.level
    rank_zero.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore",
                message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                category=FutureWarning,
                module=r"lightning\.pytorch\.utilities\._pytree",
            )
            yield
    finally:
        rank_zero.setLevel(level)
