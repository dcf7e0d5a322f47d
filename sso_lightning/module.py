"""The LightningModule: owns the policy and turns one batch into the SSO loss.

All sequences of a batch (up to 6 per example, only those the objective reads) go
through ONE forward pass; per-sequence summed log-probs come off its logits and the
objective from ``losses`` does the rest. Reference log-probs arrive with the data,
so no reference model is held here.

Under scheme two_stage every SSO iteration is two epochs: the regeneration callback
sets ``phase`` to "generator" (the weights learn L+ + L- as the data generator, logged
as ``generator/*``) and then to "policy" (``train/*``). Logged epochs are iterations.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch

from sso_lightning.losses import SeqLogps, SSOObjective, sequence_logps


class SSOModule(L.LightningModule):
    def __init__(
        self, policy, tokenizer, objective: SSOObjective, optimizer: Callable[..., torch.optim.Optimizer],
        compile: bool = False, compile_backend: str = "inductor", scheme: str = "combined",
    ):
        super().__init__()
        self.policy, self.tokenizer, self.objective, self.make_optimizer = policy, tokenizer, objective, optimizer
        # compiled for training steps only: generation calls the plain module with changing shapes.
        # A compiled bound method, not a module attribute, so state_dict holds the policy once.
        self.policy_logits = torch.compile(self._policy_logits, backend=compile_backend) if compile else self._policy_logits
        self.phases_per_iteration = 2 if scheme == "two_stage" else 1
        self.phase = "combined" if scheme == "combined" else "generator"
        policy.train()  # from_pretrained returns eval mode

    def training_step(self, batch, batch_idx):
        logits = self.policy_logits(batch["input_ids"], batch["attention_mask"])
        sums, lengths = sequence_logps(logits, batch["input_ids"], batch["response_mask"])
        num_keys, batch_size = batch["ref"].shape
        sums, lengths = sums.view(num_keys, batch_size), lengths.view(num_keys, batch_size)
        seqs = {key: SeqLogps(sums[i], batch["ref"][i], lengths[i]) for i, key in enumerate(self.keys)}
        terms = self.objective(seqs, self.phase)
        prefix = "generator" if self.phase == "generator" else "train"
        metrics = {f"{prefix}/{name}": value.detach() for name, value in terms.items()}
        if self.phases_per_iteration > 1:  # Lightning's epoch counts phases; the tables count iterations
            metrics["epoch"] = torch.tensor(float(self.iteration))
        # sync_dist: under DDP the logged value is the mean over all ranks, i.e. over the global batch
        self.log_dict(metrics, batch_size=batch_size, sync_dist=True)
        return terms["loss"]

    @property
    def keys(self) -> tuple[str, ...]:
        return self.objective.required_sequences(self.phase)

    @property
    def iteration(self) -> int:
        return self.current_epoch // self.phases_per_iteration

    def _policy_logits(self, input_ids, attention_mask):
        return self.policy(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def configure_optimizers(self):
        return self.make_optimizer(params=[p for p in self.policy.parameters() if p.requires_grad])
