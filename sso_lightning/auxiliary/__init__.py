"""Auxiliary losses: a self-supervised term added to the preference objective in every phase.

One is added by a file here and a config in ``conf/loss/aux/`` (``loss/aux=<name>``), as SPO is.
It is an object with:

* ``weight``: its coefficient in the total loss;
* ``rows(tokenizer)``: a function giving its own rows of each training batch ((prompt, response)
  pairs and one label per pair), which ride in the same forward as the preference sequences;
* ``head(hidden_size)``: a fresh trainable module on the policy's final hidden state, part of the
  LightningModule (and its checkpoints) but not of the exported policy; ``head_lr`` its learning
  rate (None: the optimizer's);
* ``__call__(head, hidden, response_mask, labels) -> (loss, metrics)`` on those rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from torch import Tensor, nn

from sso_lightning.data.batching import ExtraRows


class AuxiliaryLoss(Protocol):
    weight: float
    head_lr: float | None

    def rows(self, tokenizer) -> ExtraRows: ...

    def head(self, hidden_size: int) -> nn.Module: ...

    def __call__(
        self, head: nn.Module, hidden: Tensor, response_mask: Tensor, labels: Tensor
    ) -> tuple[Tensor, Mapping[str, Tensor]]: ...
