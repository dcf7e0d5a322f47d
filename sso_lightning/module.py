"""The LightningModule: owns the policy and turns one batch into the SSO loss.

All sequences of a batch (up to 6 per example, only those the objective reads) go
through ONE forward pass; per-sequence summed log-probs come off its logits and the
objective from ``losses`` does the rest. Reference log-probs arrive with the data,
so no reference model is held here.

With SPO (``loss.aux=spo``) the batch's degree variants ride in the same forward; a
linear head on their final hidden state, mean-pooled over the response, classifies their
degree. The head is part of this module (and its checkpoints), not of the policy.

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
        self,
        policy,
        tokenizer,
        objective: SSOObjective,
        optimizer: Callable[..., torch.optim.Optimizer],
        compile: bool = False,
        compile_backend: str = "inductor",
        scheme: str = "combined",
    ):
        super().__init__()
        self.policy, self.tokenizer, self.objective, self.make_optimizer = policy, tokenizer, objective, optimizer
        # compiled for training steps only: generation calls the plain module with changing shapes.
        # A compiled bound method, not a module attribute, so state_dict holds the policy once.
        self.policy_forward = (
            torch.compile(self._policy_forward, backend=compile_backend) if compile else self._policy_forward
        )
        self.degree_head = None
        if objective.aux == "spo":
            self.degree_head = torch.nn.Linear(policy.config.hidden_size, objective.spo.num_degrees + 1)
        self.phases_per_iteration = 2 if scheme == "two_stage" else 1
        self.phase = "combined" if scheme == "combined" else "generator"
        policy.train()  # from_pretrained returns eval mode

    def training_step(self, batch, batch_idx):
        spo = self.degree_head is not None
        logits, hidden = self.policy_forward(batch["input_ids"], batch["attention_mask"], spo)
        num_keys, batch_size = batch["ref"].shape
        rows = num_keys * batch_size  # the preference sequences; degree variants (SPO) follow
        ids, mask = batch["input_ids"], batch["response_mask"]
        sums, lengths = sequence_logps(logits[:rows], ids[:rows], mask[:rows])
        sums, lengths = sums.view(num_keys, batch_size), lengths.view(num_keys, batch_size)
        seqs = {key: SeqLogps(sums[i], batch["ref"][i], lengths[i]) for i, key in enumerate(self.keys)}
        degrees = None
        if spo:
            variant_mask = mask[rows:, :, None].to(hidden.dtype)
            pooled = (hidden[rows:] * variant_mask).sum(1) / variant_mask.sum(1).clamp(min=1)
            degrees = (self.degree_head(pooled.to(self.degree_head.weight.dtype)), batch["degree_labels"])
        terms = self.objective(seqs, self.phase, degrees)
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

    def _policy_forward(self, input_ids, attention_mask, hidden: bool):
        """Logits, and the final hidden state when the degree head needs it."""
        out = self.policy(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False, output_hidden_states=hidden
        )
        return out.logits, out.hidden_states[-1] if hidden else None

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if self.degree_head is None:
            return self.make_optimizer(params=params)
        head = {"params": list(self.degree_head.parameters())}
        if self.objective.spo.head_lr is not None:
            head["lr"] = self.objective.spo.head_lr
        return self.make_optimizer(params=[{"params": params}, head])
