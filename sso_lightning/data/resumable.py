"""A DataLoader that a run can stop and resume in the middle of an epoch.

Lightning stores a loader's ``state_dict`` in every checkpoint and hands it back to the loader
it makes when the run resumes. A shuffled order is drawn from torch's generator when the first
batch is fetched (after the epoch's evaluation, at the start of a run), so ``RecordedShuffle``
keeps that generator's state then: the resumed loader draws the same order from it, skips the
batches the checkpoint had trained, and puts the generator back as the checkpoint restored it.
Under DDP the order comes from the seed and the epoch, which the state keeps too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, RandomSampler


class RecordedShuffle(RandomSampler):
    """``DataLoader(shuffle=True)``'s sampler, keeping torch's generator state at the draw."""

    drawn_from: torch.Tensor | None = None

    def __iter__(self):
        self.drawn_from = torch.get_rng_state()
        yield from super().__iter__()


class ResumableLoader(DataLoader):
    def __init__(self, *args, epoch: int, trained: Callable[[], int], **kwargs):
        """``epoch``: the phase whose data this serves; ``trained``: batches of it trained so far."""
        super().__init__(*args, **kwargs)
        self.epoch, self.trained = epoch, trained
        self.resume_at: dict | None = None

    def __iter__(self):
        if self.resume_at is None:
            return super().__iter__()
        state, self.resume_at = self.resume_at, None
        restored = torch.get_rng_state()
        if state["sampler_epoch"] is not None:  # Lightning sets it only after the loader resumed
            self.sampler.set_epoch(state["sampler_epoch"])
        iterator = super().__iter__()
        if state["rng"] is not None:
            torch.set_rng_state(state["rng"])
        for _ in range(state["trained"]):
            iterator._next_index()  # the sampler's next batch of indices (the first draws the order), not loaded
        torch.set_rng_state(restored)
        return iterator

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "rng": getattr(self.sampler, "drawn_from", None),  # a shuffle's order: drawn from torch's generator
            "sampler_epoch": getattr(self.sampler, "epoch", None),  # DDP's: drawn from the seed and the epoch
            "trained": self.trained(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Only a checkpoint taken inside this loader's epoch resumes it; one from the end of the
        previous epoch starts this one afresh."""
        if state["epoch"] == self.epoch and 0 < state["trained"] < len(self):
            self.resume_at = state
