"""Training schemes: how one SSO iteration is organised (``scheme=<name>``, ``conf/scheme/``).

A scheme is one object with:

* ``phases``: the objective's phase trained in each Lightning epoch of an iteration (one epoch
  per phase; ``losses.SSOObjective`` says which sequences and which loss each phase uses);
* ``check(objective, offline, regenerate)``: refuse options the scheme cannot honour, before
  any work is done;
* ``start(step)``: what happens before a phase: the data it trains on (an ``IterationData``,
  or None to keep the current data) and anything it does to the weights between phases;
* ``state_dict()`` / ``load_state_dict(state)``: what it carries from one phase to the next,
  saved in every checkpoint so that a resumed run goes on where it stopped.

A new scheme is a file here and a config in ``conf/scheme/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sso_lightning.data.snapshot import SteeredExample
from sso_lightning.pipeline import IterationData, IterationPipeline


@dataclass
class PhaseStart:
    """What a scheme gets before a phase."""

    pipeline: IterationPipeline
    policy: object  # the trained model (under LoRA, the peft model)
    optimizer: object  # the optimizer of the LightningModule
    iteration: int
    phase: str
    keys: Sequence[str]  # the sequences this phase trains on
    offline: list[SteeredExample] | None = None  # data.offline: examples read from a file
    regenerate: bool = True  # data.regenerate


class Scheme(Protocol):
    phases: tuple[str, ...]

    def check(self, objective, offline: bool, regenerate: bool) -> None: ...

    def start(self, step: PhaseStart) -> IterationData | None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...
