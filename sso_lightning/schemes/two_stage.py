"""Scheme ``two_stage`` (the published paper's description): each iteration is two phases.

1. generator: the policy samples y+, y- and yo (``epoch_<k>_generator.jsonl``, metrics
   ``steering/*``). Its trainable weights and optimizer state are set aside on the CPU, and
   the same weights, as the data generator, learn L+ + L- with a fresh optimizer.
2. policy: the generator samples fresh y+ | x+ and y- | x-; the policy's weights and optimizer
   state come back in place, and the policy learns l_base(x, y+, y-) on those pairs
   (``epoch_<k>.jsonl``, ``data/*``), with reference log-probs and on-policy-ness from the policy.

Under LoRA only the adapters are set aside: generator and policy are two adapter sets on one
frozen base, and the generator lives only for its iteration.
"""

from __future__ import annotations

import copy

import torch

from sso_lightning.errors import ConfigError
from sso_lightning.pipeline import IterationData
from sso_lightning.schemes import PhaseStart
from sso_lightning.sequences import RESPONSE_PROMPTS

STEERED_PAIR = {"y+": "x+", "y-": "x-"}  # what the generator samples for the policy


class TwoStage:
    phases = ("generator", "policy")

    def __init__(self):
        self.prompts, self.policy_state = [], None

    def check(self, objective, offline: bool, regenerate: bool) -> None:
        if not objective.steers:
            raise ConfigError(
                "scheme=two_stage trains the data generator on L+ + L-, and loss.plus=false loss.minus=off "
                "leaves it nothing to learn; use scheme=combined (PBAA)"
            )
        if offline or not regenerate:
            raise ConfigError(
                "scheme=two_stage samples fresh pairs from its generator every iteration; "
                "data.offline and data.regenerate=false need scheme=combined"
            )

    def start(self, step: PhaseStart) -> IterationData:
        if step.phase == "generator":
            return self.start_generator(step)
        return self.start_policy(step)

    def start_generator(self, step: PhaseStart) -> IterationData:
        pipeline, k = step.pipeline, step.iteration
        self.prompts = pipeline.steer(step.policy)
        kept, metrics = pipeline.sample(step.policy, self.prompts, RESPONSE_PROMPTS, k)
        data = pipeline.prepare(step.policy, kept, step.keys, f"epoch_{k}_generator.jsonl", metrics, prefix="steering")
        self.policy_state = set_aside(step.policy, step.optimizer)
        return data

    def start_policy(self, step: PhaseStart) -> IterationData:
        pipeline, k = step.pipeline, step.iteration
        kept, metrics = pipeline.sample(step.policy, self.prompts, STEERED_PAIR, k)  # the generator samples
        restore(step.policy, step.optimizer, self.policy_state)
        self.policy_state = None
        return pipeline.prepare(step.policy, kept, step.keys, f"epoch_{k}.jsonl", metrics)

    def state_dict(self) -> dict:
        """During the generator phase: its steered prompts and the policy set aside."""
        return {"prompts": list(self.prompts), "policy_state": self.policy_state}

    def load_state_dict(self, state: dict) -> None:
        self.prompts, self.policy_state = list(state["prompts"]), state["policy_state"]


def set_aside(model, optimizer) -> dict:
    """CPU copies of the trainable weights and of the optimizer state; the optimizer then
    starts empty (for the generator)."""
    weights = {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}
    state = optimizer.state_dict()
    state = {
        "state": {
            i: {k: v.to("cpu", copy=True) if torch.is_tensor(v) else v for k, v in s.items()}
            for i, s in state["state"].items()
        },
        "param_groups": copy.deepcopy(state["param_groups"]),
    }
    optimizer.state.clear()
    return {"weights": weights, "optimizer": state}


def restore(model, optimizer, saved: dict) -> None:
    """Put back what ``set_aside`` kept, in place (so DDP and the optimizer keep their parameters)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in saved["weights"]:
                p.copy_(saved["weights"][name])
    optimizer.load_state_dict(saved["optimizer"])
