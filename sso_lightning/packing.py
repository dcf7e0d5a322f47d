"""Padding-free rows: the sequences of a right-padded batch laid end to end.

The rows of one step differ a lot in length (prompts with and without a principle, answers of
1 to ``max_new_tokens`` tokens), so a right-padded batch spends compute in proportion to its
padding. Packed, every sequence restarts its position ids at 0 and attends only to itself:

* with ``flash_attention_2``, all sequences share ONE row and no mask: transformers reads the
  restarting position ids and runs the variable-length kernel;
* with ``sdpa`` or ``eager``, sequences are packed first-fit-decreasing into rows no longer
  than the longest sequence (so attention never costs more than in the padded batch), each row
  with an explicit block-causal mask. (Restarting position ids alone do not stop ``sdpa`` from
  attending across sequences.)

``index`` maps every token of the padded batch to its place in the packed rows, so callers
keep the padded batch's coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

VARLEN = "flash_attention_2"
MASKED = ("sdpa", "eager")


@dataclass(frozen=True)
class PackedRows:
    input_ids: Tensor  # [R, W]
    position_ids: Tensor  # [R, W], restarting at 0 for every sequence
    attention_mask: Tensor | None  # [R, 1, W, W] block-causal; None for the variable-length kernel
    index: Tensor  # [N, T]: flat position in [R * W] of each token of the padded batch, -1 at its padding


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[tuple[int, int]]:
    """(row, offset) of each sequence, packed longest first into rows of at most ``capacity``."""
    fill: list[int] = []
    place: list[tuple[int, int]] = [(0, 0)] * len(lengths)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, used in enumerate(fill) if used + lengths[i] <= capacity), len(fill))
        if row == len(fill):
            fill.append(0)
        place[i] = (row, fill[row])
        fill[row] += lengths[i]
    return place


def pack_rows(input_ids: Tensor, attention_mask: Tensor, attn_implementation: str, pad_id: int = 0) -> PackedRows:
    """Pack a right-padded batch (``attention_mask`` 1 on each row's leading tokens)."""
    if attn_implementation not in (VARLEN, *MASKED):
        raise ValueError(f"packing needs one of {VARLEN}, {', '.join(MASKED)} (got {attn_implementation})")
    n, t = input_ids.shape
    device = input_ids.device
    real = attention_mask.bool()
    lengths = real.sum(1).tolist()
    if attn_implementation == VARLEN:
        starts = [0, *torch.tensor(lengths).cumsum(0)[:-1].tolist()]
        place, rows, width = [(0, s) for s in starts], 1, sum(lengths)
    else:
        width = max(lengths)
        place = first_fit_decreasing(lengths, width)
        rows = max(r for r, _ in place) + 1
    row_of, offset = (torch.tensor(column, device=device) for column in zip(*place))
    steps = torch.arange(t, device=device)
    index = (row_of[:, None] * width + offset[:, None] + steps).masked_fill(~real, -1)
    flat_ids = torch.full((rows * width,), pad_id, dtype=input_ids.dtype, device=device)
    flat_ids[index[real]] = input_ids[real]
    positions = torch.zeros(rows * width, dtype=torch.long, device=device)
    positions[index[real]] = steps.expand(n, t)[real]
    # a packed row's own sequence number per position; -1 marks the row's tail padding
    owner = torch.full((rows * width,), -1, dtype=torch.long, device=device)
    owner[index[real]] = torch.arange(n, device=device)[:, None].expand(n, t)[real]
    mask = None
    if attn_implementation in MASKED:
        owner = owner.view(rows, width)
        causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
        # tail padding sees itself, so no query row is fully masked (that would give NaN in sdpa)
        same = (owner[:, :, None] == owner[:, None, :]) & (owner[:, :, None] >= 0)
        mask = (same & causal) | torch.eye(width, dtype=torch.bool, device=device)
        mask = mask[:, None]
        if attn_implementation == "eager":  # eager attention adds the mask to the scores
            mask = torch.zeros(mask.shape, device=device).masked_fill(~mask, torch.finfo(torch.float32).min)
    return PackedRows(flat_ids.view(rows, width), positions.view(rows, width), mask, index)
