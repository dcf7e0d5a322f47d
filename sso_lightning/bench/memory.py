"""Peak memory of a training step, each measurement in a fresh process (spawned, not forked), so
that no earlier workload's pages or allocator caches count.

The peak is what the steps add on top of the process right before them: on CPU the resident
high-water mark (VmHWM) after the steps minus the resident size (VmRSS) right before, the mark
being reset at that moment by writing "5" to /proc/self/clear_refs; on GPU
``max_memory_allocated`` after minus ``memory_allocated`` before, the peak statistics reset. The
model and data are loaded before; the steps include the first one, which creates the optimizer
state, on both sides alike. Our side is the SSO step through Lightning; the baseline is a bare SFT
step on the same rows."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import lightning as L
import torch

from sso_lightning.bench import bare, ours
from sso_lightning.bench.quiet import quiet
from sso_lightning.bench.workload import Workload
from sso_lightning.data.batching import Collator
from sso_lightning.train import build

MIB = 2**20
STEPS = 2  # the first step (optimizer state created) and one in steady state


def status_bytes(field: str) -> int:
    """A ``/proc/self/status`` size (VmRSS, VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


class PeakMemory:
    def __init__(self, device: torch.device):
        self.device = device

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
        else:
            self.before = status_bytes("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS

    def stop(self) -> float:
        """MiB the steps added at their peak."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - self.before) / MIB
        return (status_bytes("VmHWM") - self.before) / MIB


class PeakOfFit(L.Callback):
    """The peak over a Lightning fit's steps: from the first batch's start to the end of training."""

    def __init__(self, peak: PeakMemory):
        self.peak, self.mib = peak, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.peak.start()

    def on_train_end(self, trainer, pl_module):
        self.mib = self.peak.stop()


def steps(work: Workload) -> int:
    return min(STEPS, work.settings.batches)


def ours_sso_step_mib(work: Workload) -> float:
    """Our SSO step (``loss=``, ``trainer.precision``, every ``model.*`` option), in this process."""
    work.settings.use_threads()
    with quiet():
        probe = PeakOfFit(PeakMemory(work.device))
        ours.fit_steps(work, build(work.cfg.loss), str(work.cfg.trainer.precision), [probe], steps(work))
        return probe.mib


def bare_sft_step_mib(work: Workload) -> float:
    """A bare SFT step on the same rows (LoRA too when ``model.lora.enabled``), in this process."""
    work.settings.use_threads()
    with quiet():
        model = work.plain_model()
        if work.cfg.model.lora.enabled:
            model = build(work.cfg.model.lora).apply(model)
        model.train()
        optimizer = build(work.cfg.optimizer)(params=[p for p in model.parameters() if p.requires_grad])
        keys = build(work.cfg.loss).required_sequences()
        collate = Collator(keys, work.tokenizer.pad_token_id)
        batches = [bare.to_device(collate(batch), work.device) for batch in work.batches(steps(work))]
        bf16 = str(work.cfg.trainer.precision) == "bf16-mixed"
        peak = PeakMemory(work.device)
        peak.start()
        for batch in batches:
            bare.sft_step(model, optimizer, batch, bf16)
        return peak.stop()


def in_fresh_process(measure, work: Workload) -> float:
    """``measure(work)`` in a newly spawned Python process."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        return pool.submit(measure, work).result()
