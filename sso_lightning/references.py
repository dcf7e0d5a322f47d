"""Which model gives the reference log-probs stored with an iteration's data (``data.reference``).

The reference is scored right after generation and stored with the data, so a training
step needs no reference model in memory."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from sso_lightning.data.snapshot import SteeredExample
from sso_lightning.errors import ConfigError
from sso_lightning.models import has_adapters
from sso_lightning.scoring import score_sequences

Scores = dict[str, tuple[torch.Tensor, torch.Tensor]]


class IterationReference:
    """The policy that generated the iteration's data: its own (on-policy) scores."""

    def start(self, policy) -> None:
        pass

    def score(self, policy, examples: Sequence[SteeredExample], keys, pad_id: int, batch_size: int, on_policy: Scores):
        return on_policy


class InitialReference:
    """The model the run started from: under LoRA the base with adapters disabled (no copy
    held), else a CPU copy taken at the start and brought to the device only to score."""

    def __init__(self):
        self.initial = None

    def start(self, policy) -> None:
        if not has_adapters(policy):
            self.initial = copy.deepcopy(policy).cpu()

    def score(self, policy, examples: Sequence[SteeredExample], keys, pad_id: int, batch_size: int, on_policy: Scores):
        if has_adapters(policy):
            with policy.disable_adapter():
                return score_sequences(policy, examples, keys, pad_id, batch_size)
        device = next(policy.parameters()).device
        try:
            return score_sequences(self.initial.to(device), examples, keys, pad_id, batch_size)
        finally:
            self.initial.cpu()


REFERENCES = {"iteration": IterationReference, "initial": InitialReference}


def make_reference(name: str):
    if name not in REFERENCES:
        raise ConfigError(f"data.reference={name} is not valid (valid: {', '.join(REFERENCES)})")
    return REFERENCES[name]()
