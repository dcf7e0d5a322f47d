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


def pack(
    examples: Sequence[SteeredExample], keys: Sequence[str], pad_id: int, max_length: int | None = None
) -> dict[str, torch.Tensor]:
    return pack_pairs(sequence_pairs(examples, keys), pad_id, max_length)


def cut_lengths(prompt: int, response: int, max_length: int) -> tuple[int, int]:
    """How many prompt and response tokens a row of at most ``max_length`` keeps, by LLaMA-Factory's
    rule (``cutoff_len``, the authors' trainer): a short response is kept whole and the prompt cut;
    else a short prompt is kept whole and the response cut; else both are cut in proportion."""
    if response * 2 < max_length:
        most_response = max_length
    elif prompt * 2 < max_length:
        most_response = max_length - prompt
    else:
        most_response = int(max_length * response / (prompt + response))
    kept_response = min(most_response, response)
    return min(max(max_length - kept_response, 0), prompt), kept_response


def pack_pairs(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int, max_length: int | None = None):
    """Rows of prompt + response ids; ``response_mask`` marks the response tokens. With
    ``max_length``, each row keeps the first tokens of its prompt and of its response that
    ``cut_lengths`` allows."""
    if max_length is not None:
        pairs = [
            (p[:kept_p], r[:kept_r]) for p, r in pairs for kept_p, kept_r in [cut_lengths(len(p), len(r), max_length)]
        ]
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

    def __init__(
        self, keys: Sequence[str], pad_id: int, extra_rows: ExtraRows | None = None, max_length: int | None = None
    ):
        self.keys, self.pad_id, self.extra_rows, self.max_length = tuple(keys), pad_id, extra_rows, max_length

    def __call__(self, examples: Sequence[SteeredExample]) -> dict[str, torch.Tensor]:
        pairs = sequence_pairs(examples, self.keys)
        if self.extra_rows is not None:
            extra_pairs, labels = self.extra_rows(examples)
            pairs += extra_pairs
        batch = pack_pairs(pairs, self.pad_id, self.max_length)
        batch["ref"] = torch.tensor([[ex.ref_logps[k] for ex in examples] for k in self.keys], dtype=torch.float32)
        if self.extra_rows is not None:
            batch["aux_labels"] = torch.tensor(labels, dtype=torch.long)
        return batch
