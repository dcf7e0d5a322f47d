"""Scheme ``combined``, the authors' trainer: one model, one loss. Every iteration the
policy samples y+ | x+, y- | x- and yo | x and trains on P + W*g*(L+ + L-)."""

from __future__ import annotations

from sso_lightning.pipeline import IterationData
from sso_lightning.schemes import PhaseStart


class Combined:
    phases = ("combined",)

    def check(self, objective, offline: bool, regenerate: bool) -> None:
        pass  # every objective, offline data and a fixed snapshot are all fine

    def start(self, step: PhaseStart) -> IterationData | None:
        """Iteration 0: the data from the file (``data.offline``) or from the initial policy.
        Later iterations: fresh data from the current policy, unless ``data.regenerate=false``
        or offline, where training goes on with the data it has."""
        if step.iteration > 0 and (step.offline is not None or not step.regenerate):
            return None
        snapshot = f"epoch_{step.iteration}.jsonl"
        if step.offline is not None:
            examples = step.pipeline.own_share(step.offline)
            return step.pipeline.prepare(step.policy, examples, step.keys, snapshot, {})
        return step.pipeline.run(step.policy, step.keys, snapshot, step.iteration)

    def state_dict(self) -> dict:
        return {}  # nothing carries over: each iteration starts from the policy and its data

    def load_state_dict(self, state: dict) -> None:
        pass
