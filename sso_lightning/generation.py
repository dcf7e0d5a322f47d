"""Batched sampling from the policy with Hugging Face ``generate``.

Prompts are sorted by length so a batch wastes little padding, left-padded so every
row continues from its last prompt token, and decoded with the KV cache. Token ids
are kept as generated (never decoded and re-encoded), and an answer that did not
reach EOS within ``max_new_tokens`` is marked unfinished.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from sso_lightning.errors import ConfigError
from sso_lightning.models import inference


@dataclass(frozen=True)
class Response:
    ids: tuple[int, ...]  # generated tokens, EOS included when finished
    text: str  # ids decoded without special tokens
    finished: bool  # reached EOS


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 0.8
    max_new_tokens: int = 2048
    batch_size: int = 64

    def __post_init__(self):
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in (self.temperature, self.top_p)):
            raise ConfigError(
                f"generation: temperature and top_p must be finite numbers (got {self.temperature}, {self.top_p})"
            )
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ConfigError(
                "generation: need temperature >= 0, 0 < top_p <= 1, max_new_tokens >= 1, batch_size >= 1 "
                f"(got {self.temperature}, {self.top_p}, {self.max_new_tokens}, {self.batch_size})"
            )


def generate(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    sampling: Sampling,
    on_batch: Callable[[int], None] | None = None,
) -> list[Response]:
    """One sampled response per prompt (token ids), in the order of ``prompts``."""
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Response | None] = [None] * len(prompts)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    with inference(model):
        for start in range(0, len(order), sampling.batch_size):
            batch = order[start : start + sampling.batch_size]
            input_ids, attention_mask = pad_batch([prompts[i] for i in batch], pad, device, side="left")
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                do_sample=sampling.temperature > 0,
                temperature=sampling.temperature if sampling.temperature > 0 else None,
                top_p=sampling.top_p if sampling.temperature > 0 else None,
                top_k=None,
                max_new_tokens=sampling.max_new_tokens,
                eos_token_id=eos,
                pad_token_id=pad,
                use_cache=True,
            )
            for row, i in zip(out[:, input_ids.shape[1] :].tolist(), batch):
                results[i] = cut_at_eos(row, eos, tokenizer)
            if on_batch is not None:
                on_batch(len(batch))
    return results  # type: ignore[return-value]


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, device, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of token rows padded on the ``left`` (generation continues from
    the last token) or the ``right``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        ids[i, span] = torch.tensor(r, dtype=torch.long)
        mask[i, span] = 1
    return ids.to(device), mask.to(device)


def cut_at_eos(tokens: Sequence[int], eos_id: int, tokenizer) -> Response:
    """Keep tokens up to and including the first EOS; padding after it is dropped."""
    tokens = list(tokens)
    finished = eos_id in tokens
    ids = tokens[: tokens.index(eos_id) + 1] if finished else tokens
    return Response(ids=tuple(ids), text=tokenizer.decode(ids, skip_special_tokens=True).strip(), finished=finished)
