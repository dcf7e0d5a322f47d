"""SPO's self-supervised preference-degree loss (Li et al., 2024), for ``loss/aux=spo``.

Degree variants of a response (``data.degrees``: the response with more and more of its
key content removed) ride in the training forward; a linear head on the policy's final
hidden state, mean-pooled over each variant's response tokens, classifies the degree.
The total loss gains ``weight * cross_entropy(head logits, degree labels)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from sso_lightning.data.degrees import RESPONSES, DegreeRows, DegreeVariants
from sso_lightning.errors import ConfigError


def degree_loss(logits: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Cross-entropy of the head's logits against the degree labels, and its metrics."""
    loss = F.cross_entropy(logits.float(), labels)
    return loss, {"loss_degree": loss.detach(), "degree_acc": (logits.argmax(-1) == labels).float().mean()}


@dataclass(frozen=True)
class SPO:
    """``num_degrees``, ``unit``, ``responses``, ``extractor`` and ``seed`` shape the variants
    (see ``data.degrees``); ``head_lr`` is the new head's learning rate (None: the optimizer's)."""

    weight: float = 0.1
    num_degrees: int = 3
    unit: str = "count"
    responses: str = "chosen"
    extractor: str = "rake"
    seed: int = 0
    head_lr: float | None = 1e-3

    def __post_init__(self):
        if not self.weight >= 0:
            raise ConfigError(f"loss.aux.weight must be >= 0 (got {self.weight})")
        if self.responses not in RESPONSES:
            raise ConfigError(f"loss.aux.responses={self.responses} is not valid (valid: {', '.join(RESPONSES)})")
        self.variants()  # checks the rest

    def variants(self) -> DegreeVariants:
        return DegreeVariants(self.num_degrees, self.unit, self.extractor, self.seed)

    def rows(self, tokenizer) -> DegreeRows:
        return DegreeRows(self.variants(), self.responses, tokenizer)

    def head(self, hidden_size: int) -> nn.Module:
        return nn.Linear(hidden_size, self.num_degrees + 1)

    def __call__(self, head: nn.Module, hidden: Tensor, response_mask: Tensor, labels: Tensor):
        mask = response_mask[:, :, None].to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return degree_loss(head(pooled.to(head.weight.dtype)), labels)
