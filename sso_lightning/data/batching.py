"""Packing the sequences of a batch for ONE forward pass.

Each (prompt, response) pair the loss needs, e.g. (x+, y+), becomes one row:
prompt ids followed by response ids, right-padded. Rows are key-major: row
k * B + b is sequence key k of example b, so summed log-probs reshape to [K, B].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from sso_lightning.data.snapshot import SteeredExample
from sso_lightning.sequences import split_key

Pairs = list[tuple[Sequence[int], Sequence[int]]]
# an auxiliary loss's own rows of a batch: (prompt, response) pairs and one label per pair
ExtraRows = Callable[[Sequence[SteeredExample]], tuple[Pairs, list[int]]]


def sequence_pairs(examples: Sequence[SteeredExample], keys: Sequence[str]) -> Pairs:
    pairs = []
    for key in keys:
        prompt_key, response_key = split_key(key)
        pairs += [(ex.prompt.ids[prompt_key], ex.responses[response_key].ids) for ex in examples]
    return pairs


def pack(examples: Sequence[SteeredExample], keys: Sequence[str], pad_id: int) -> dict[str, torch.Tensor]:
    return pack_pairs(sequence_pairs(examples, keys), pad_id)


def pack_pairs(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows of prompt + response ids; ``response_mask`` marks the response tokens."""
    rows = [list(p) + list(r) for p, r in pairs]
    starts = [len(p) for p, _ in pairs]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    response_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (row, start) in enumerate(zip(rows, starts)):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
        response_mask[i, start : len(row)] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


class Collator:
    """DataLoader collate_fn for the sequence keys a configured objective reads,
    with their stored reference log-probs as ``ref`` [K, B]. With ``extra_rows`` (an
    auxiliary loss's, e.g. SPO's degree variants), those rows follow as further rows of
    the same forward, labelled in ``aux_labels``."""

    def __init__(self, keys: Sequence[str], pad_id: int, extra_rows: ExtraRows | None = None):
        self.keys, self.pad_id, self.extra_rows = tuple(keys), pad_id, extra_rows

    def __call__(self, examples: Sequence[SteeredExample]) -> dict[str, torch.Tensor]:
        pairs = sequence_pairs(examples, self.keys)
        if self.extra_rows is not None:
            extra_pairs, labels = self.extra_rows(examples)
            pairs += extra_pairs
        batch = pack_pairs(pairs, self.pad_id)
        batch["ref"] = torch.tensor([[ex.ref_logps[k] for ex in examples] for k in self.keys], dtype=torch.float32)
        if self.extra_rows is not None:
            batch["aux_labels"] = torch.tensor(labels, dtype=torch.long)
        return batch
