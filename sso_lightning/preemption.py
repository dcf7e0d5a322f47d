"""Stopping a run on a signal with a checkpoint to resume from (docs/resume.md).

SIGTERM (a scheduler's or ``kill``'s), SIGUSR1 (what SLURM sends before the time limit with
``--signal=USR1@<seconds>``) and the first Ctrl-C all go through Lightning's own SIGTERM
handling: the run stops at the next boundary between optimizer steps (a generation or an
evaluation in progress finishes first), ``checkpoints.PhaseCheckpoints`` saves there, and the
run exits with 128 + the signal's number and one line saying how to resume. Under SLURM a
SIGUSR1 also requeues the job, which resumes by itself (``rundir.requeued``). A second
Ctrl-C stops at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Preemption(L.Callback):
    """Installed before the Trainer starts, so that Lightning keeps these handlers and adds its
    SIGTERM handler to them (and leaves out its own SLURM one, which saves in the middle of a step)."""

    def __init__(self):
        self.received: signal.Signals | None = None

    @contextmanager
    def catching(self) -> Iterator[None]:
        previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
        for s in STOP_SIGNALS:
            signal.signal(s, self.handle)
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, from the last checkpoint
        if self.received is None:
            self.received = signal.Signals(signum)
            again = " (Ctrl-C again: at once)" if signum == signal.SIGINT else ""
            print(
                f"\nnote: {self.received.name}: stopping at the next optimizer step with a checkpoint{again}",
                file=sys.stderr,
            )
            if signum != signal.SIGTERM:
                os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler (once it is there) takes it from here

    def on_train_start(self, trainer, pl_module):
        """Lightning installs its handler after the first generation: a signal that came before it
        is passed on now."""
        if self.received is not None and not trainer.received_sigterm:
            os.kill(os.getpid(), signal.SIGTERM)

    def requeue(self, trainer: L.Trainer) -> str:
        """Under SLURM, after a SIGUSR1: put the job back in the queue (rank 0), as Lightning's
        SLURM environment does; returns what was done, for the closing line."""
        job = os.environ.get("SLURM_JOB_ID")
        if self.received != signal.SIGUSR1 or job is None:
            return ""
        if array := os.environ.get("SLURM_ARRAY_JOB_ID"):
            job = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        if not trainer.is_global_zero:
            return f"; SLURM job {job} is requeued"
        try:
            subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as e:
            print(f"warning: scontrol requeue {job} failed: {e}", file=sys.stderr)
            return f"; requeueing SLURM job {job} failed"
        return f"; SLURM job {job} is requeued and resumes from it"
