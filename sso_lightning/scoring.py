"""Summed log-probs of (prompt, response) sequences under a model, without gradients.

Used right after generation to store reference log-probs with the data, and to
measure how on-policy the generated answers are."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sso_lightning.data.batching import pack
from sso_lightning.data.snapshot import SteeredExample
from sso_lightning.forward import score_rows
from sso_lightning.models import inference


def score_sequences(
    model,
    examples: Sequence[SteeredExample],
    keys: Sequence[str],
    pad_id: int,
    batch_size: int,
    max_length: int | None = None,
    packing: bool = False,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per key: (summed log-probs [N], response lengths [N]) on the CPU; rows cut as training cuts
    them (``max_length``) and run as training runs them (``packing``), so stored reference
    log-probs match the training step's."""
    device = next(model.parameters()).device
    sums = {k: [] for k in keys}
    lengths = {k: [] for k in keys}
    with inference(model):
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            batch = {k: v.to(device) for k, v in pack(chunk, keys, pad_id, max_length).items()}
            s, n, _ = score_rows(model, batch, len(keys) * len(chunk), hidden=False, packing=packing)
            for i, key in enumerate(keys):
                sums[key].append(s[i * len(chunk) : (i + 1) * len(chunk)].cpu())
                lengths[key].append(n[i * len(chunk) : (i + 1) * len(chunk)].cpu())
    return {k: (torch.cat(sums[k]), torch.cat(lengths[k])) for k in keys}
