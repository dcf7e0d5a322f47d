"""The bare baselines: the same work as our side, written the plainest way, on a plain
``from_pretrained`` model. A training step is one right-padded forward over all rows with full
logits, ``log_softmax``/``gather`` for the response tokens, the loss, backward, gradient clipping
as ``trainer.gradient_clip_val`` asks, and the optimizer of ``optimizer.*``. Batches are padded by
the project's collator before the clock starts, as Lightning and TRL collate before theirs, so
only the model work is timed; scoring pads inside the clock on both sides, as ``score_sequences``
does."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from sso_lightning.data.batching import pack
from sso_lightning.data.snapshot import SteeredExample
from sso_lightning.generation import Sampling


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def response_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed log-probs of each row's response tokens, from the full logits."""
    ids = batch["input_ids"]
    logits = model(input_ids=ids, attention_mask=batch["attention_mask"], use_cache=False).logits[:, :-1]
    token = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (token * batch["response_mask"][:, 1:]).sum(-1)


def preference_step(model, optimizer, batch, beta: float, clip: float | None, bf16: bool) -> None:
    """DPO on consecutive key pairs of the rows (row k * B + b: key k of example b), e.g.
    (x|y+, x|y-) for PBAA and also (x+|y+, x+|y-), (x-|yo, x-|y+) for SSO, against the stored
    reference log-probs ``batch["ref"]`` [K, B]."""
    with autocast(batch["input_ids"].device, bf16):
        logps = response_logps(model, batch).view(batch["ref"].shape)
    ratios = logps - batch["ref"]
    loss = -F.logsigmoid(beta * (ratios[0::2] - ratios[1::2])).sum(0).mean()
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def sft_step(model, optimizer, batch, bf16: bool) -> None:
    """The standard supervised step: the model's own loss on the response tokens."""
    labels = batch["input_ids"].masked_fill(~batch["response_mask"], -100)
    with autocast(batch["input_ids"].device, bf16):
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def score(model, batch: Sequence[SteeredExample], keys: tuple[str, ...], pad_id: int) -> torch.Tensor:
    """One no-grad padded forward over a batch's rows: their summed response log-probs."""
    return response_logps(model, to_device(pack(batch, keys, pad_id), next(model.parameters()).device))


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[Sequence[int]], sampling: Sampling) -> list[list[int]]:
    """Plain batched ``model.generate``: prompts in their given order, left-padded by the tokenizer,
    sampled as ``sampling`` says; the new tokens of each row (padding after EOS included)."""
    rows = []
    for start in range(0, len(prompts), sampling.batch_size):
        batch = [list(p) for p in prompts[start : start + sampling.batch_size]]
        inputs = tokenizer.pad({"input_ids": batch}, padding=True, padding_side="left", return_tensors="pt")
        inputs = inputs.to(next(model.parameters()).device)
        sampled = sampling.temperature > 0
        out = model.generate(
            **inputs,
            do_sample=sampled,
            temperature=sampling.temperature if sampled else None,
            top_p=sampling.top_p if sampled else None,
            top_k=None,
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        rows += out[:, inputs["input_ids"].shape[1] :].tolist()
    return rows
