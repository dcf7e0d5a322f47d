"""Which model gives the reference log-probs stored with an iteration's data (``data.reference``).

The reference is scored right after generation and stored with the data, so a training
step needs no reference model in memory."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from sso_lightning.errors import ConfigError
from sso_lightning.models import has_adapters

Scores = dict[str, tuple[torch.Tensor, torch.Tensor]]
Scorer = Callable[[torch.nn.Module], Scores]  # a model -> its log-probs of the iteration's sequences


class IterationReference:
    """The policy that generated the iteration's data: its own (on-policy) scores."""

    def start(self, policy) -> None:
        pass

    def score(self, policy, score_with: Scorer, on_policy: Scores) -> Scores:
        return on_policy


class InitialReference:
    """The model the run started from: under LoRA the base with adapters disabled (no copy
    held), else a CPU copy taken before training (a resumed run takes it from the model as
    loaded, before the checkpoint's weights) and brought to the device, in the policy's dtype,
    only to score."""

    def __init__(self):
        self.initial = None

    def start(self, policy) -> None:
        if not has_adapters(policy):
            self.initial = copy.deepcopy(policy).cpu()

    def score(self, policy, score_with: Scorer, on_policy: Scores) -> Scores:
        if has_adapters(policy):
            with policy.disable_adapter():
                return score_with(policy)
        weight = next(policy.parameters())
        try:
            return score_with(self.initial.to(device=weight.device, dtype=weight.dtype))
        finally:
            self.initial.cpu()


REFERENCES = {"iteration": IterationReference, "initial": InitialReference}


def make_reference(name: str):
    if name not in REFERENCES:
        raise ConfigError(f"data.reference={name} is not valid (valid: {', '.join(REFERENCES)})")
    return REFERENCES[name]()
