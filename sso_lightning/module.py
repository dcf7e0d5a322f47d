"""The LightningModule: owns the policy and turns one batch into the SSO loss.

All sequences of a batch (up to 6 per example, only those the objective reads) go
through ONE forward pass (``forward``: padded, or packed without full logits), which gives
per-sequence summed log-probs; the objective from ``losses`` does the rest. Reference log-probs arrive with the data,
so no reference model is held here.

With an auxiliary loss (``loss/aux=spo``) its rows ride in the same forward, and its head
on the final hidden state is part of this module (and its checkpoints), not of the policy.

A scheme's iteration is one or more phases, one epoch each; the ``Iterations`` callback sets
``phase`` before each. The generator phase of two_stage logs as ``generator/*``, every other
phase as ``train/*``. Logged epochs are iterations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning as L
import torch

from sso_lightning.forward import TrainingForward, training_forward
from sso_lightning.losses import SeqLogps, SSOObjective
from sso_lightning.schedule import LearningRateSchedule


class SSOModule(L.LightningModule):
    def __init__(
        self,
        policy,
        tokenizer,
        objective: SSOObjective,
        optimizer: Callable[..., torch.optim.Optimizer],
        phases: Sequence[str] = ("combined",),
        forward: TrainingForward | None = None,
        schedule: LearningRateSchedule | None = None,
    ):
        """``forward``: the training forward (default: padded, uncompiled); ``schedule``:
        the learning-rate schedule (None: the optimizer's rate throughout)."""
        super().__init__()
        self.policy, self.tokenizer, self.objective, self.make_optimizer = policy, tokenizer, objective, optimizer
        self.schedule = schedule
        self.policy_forward = forward or training_forward(policy)
        self.aux_head = objective.aux.head(policy.config.hidden_size) if objective.aux is not None else None
        self.phases_per_iteration = len(phases)
        self.phase = phases[0]
        policy.train()  # from_pretrained returns eval mode

    def training_step(self, batch, batch_idx):
        aux = self.aux_head is not None
        num_keys, batch_size = batch["ref"].shape
        rows = num_keys * batch_size  # the preference sequences; an auxiliary loss's rows follow
        out = self.policy_forward(batch, rows, aux)
        sums, lengths = out.sums.view(num_keys, batch_size), out.lengths.view(num_keys, batch_size)
        seqs = {key: SeqLogps(sums[i], batch["ref"][i], lengths[i]) for i, key in enumerate(self.keys)}
        aux_terms = None
        if aux:
            mask = batch["response_mask"][rows:]
            aux_terms = self.objective.aux(self.aux_head, out.hidden, mask, batch["aux_labels"])
        terms = self.objective(seqs, self.phase, aux_terms)
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

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if self.aux_head is None:
            optimizer = self.make_optimizer(params=params)
        else:
            head = {"params": list(self.aux_head.parameters())}
            if self.objective.aux.head_lr is not None:
                head["lr"] = self.objective.aux.head_lr
            optimizer = self.make_optimizer(params=[{"params": params}, head])
        if self.schedule is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.schedule.scheduler(optimizer)}
