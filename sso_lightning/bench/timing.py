"""Step times: wall-clock seconds per step with the device synchronised at both ends (so a GPU's
queued work counts in the step that queued it), and the median, min and max of a figure over the
timed steps. Every side steps through the same batches; the first ``warmup`` are not counted."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import lightning as L
import torch
from transformers import TrainerCallback


@dataclass(frozen=True)
class Stats:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        return cls(statistics.median(values), min(values), max(values))


class StepClock:
    """``start()`` and ``stop()`` around each step; ``seconds`` holds every step's time."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, []

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self) -> None:
        self.sync()
        self.began = time.perf_counter()

    def stop(self) -> None:
        self.sync()
        self.seconds.append(time.perf_counter() - self.began)


class LightningClock(L.Callback):
    """Times each training batch of a Lightning fit: forward, backward, optimizer step and logging."""

    def __init__(self, clock: StepClock):
        self.clock = clock

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.clock.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.clock.stop()


class TrainerClock(TrainerCallback):
    """Times each optimizer step of a Hugging Face (TRL) Trainer, from step begin to step end."""

    def __init__(self, clock: StepClock):
        self.clock = clock

    def on_step_begin(self, args, state, control, **kwargs):
        self.clock.start()

    def on_step_end(self, args, state, control, **kwargs):
        self.clock.stop()
