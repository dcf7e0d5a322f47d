"""One forward over a batch's (prompt, response) rows: each row's summed response log-probs,
for training steps and for scoring alike.

Two ways, chosen by ``model.packing``:

* padded: the right-padded batch through the model, log-probs off its full logits
  (``losses.sequence_logps``); exact for every causal LM;
* packed (``packing``): the rows packed padding-free (``packing``) through the model's
  decoder, and the head applied only where a response token is predicted
  (``head_logps``). This skips the model's own head, so it is offered only for
  architectures whose logits are exactly ``lm_head(final hidden state)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from sso_lightning.errors import ConfigError
from sso_lightning.head_logps import head_sequence_logps
from sso_lightning.losses import sequence_logps
from sso_lightning.packing import MASKED, VARLEN, pack_rows

# model types whose causal LM computes logits = lm_head(final hidden state), nothing more (no
# soft-capping or scaling); each is checked against the padded path in tests/test_packing.py
PACKABLE_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
PACKING = ("auto", "true", "false")


class RowScores(NamedTuple):
    sums: Tensor  # [scored] summed response log-probs of the first ``scored`` rows
    lengths: Tensor  # [scored] their response lengths
    hidden: Tensor | None  # [N - scored, T, H] final hidden states of the remaining rows, when asked for


def unpackable(model) -> str | None:
    """Why packed rows would not give this model's log-probs exactly, or None if they would."""
    config = model.config
    if config.model_type not in PACKABLE_MODEL_TYPES:
        return f"model type {config.model_type} (packable: {', '.join(PACKABLE_MODEL_TYPES)})"
    if config._attn_implementation not in (VARLEN, *MASKED):
        return f"attention {config._attn_implementation} (packable: {VARLEN}, {', '.join(MASKED)})"
    if type(model.get_output_embeddings()) is not nn.Linear:
        return "an output layer that is not a plain linear layer (e.g. LoRA on lm_head)"
    return None


def resolve_packing(option, model) -> bool:
    """``model.packing``: auto (on where exact), true (on, or a one-line error), false."""
    option = str(option).lower()
    if option not in PACKING:
        raise ConfigError(f"model.packing={option} is not valid (valid: {', '.join(PACKING)})")
    reason = unpackable(model)
    if option == "true" and reason is not None:
        raise ConfigError(f"model.packing=true is not exact for {reason}; use model.packing=auto or false")
    return option != "false" and reason is None


def score_rows(model, batch: dict[str, Tensor], scored: int, hidden: bool, packing: bool) -> RowScores:
    """Log-probs of the first ``scored`` rows of a right-padded batch (``input_ids``,
    ``attention_mask``, ``response_mask``); with ``hidden``, the final hidden states of the rest
    (an auxiliary loss's rows), in the padded batch's coordinates."""
    ids, mask = batch["input_ids"], batch["response_mask"]
    if not packing:
        out = model(input_ids=ids, attention_mask=batch["attention_mask"], use_cache=False, output_hidden_states=hidden)
        sums, lengths = sequence_logps(out.logits[:scored], ids[:scored], mask[:scored])
        return RowScores(sums, lengths, out.hidden_states[-1][scored:] if hidden else None)
    packed = pack_rows(ids, batch["attention_mask"], model.config._attn_implementation)
    out = model.get_decoder()(
        input_ids=packed.input_ids,
        attention_mask=packed.attention_mask,
        position_ids=packed.position_ids,
        use_cache=False,
    )
    states = out.last_hidden_state.reshape(-1, out.last_hidden_state.shape[-1])
    head = model.get_output_embeddings()
    sums, lengths = head_sequence_logps(states, packed.index[:scored], ids[:scored], mask[:scored], head)
    # padding positions read the first packed state; the auxiliary loss masks them out
    rest = states[packed.index[scored:].clamp(min=0)] if hidden else None
    return RowScores(sums, lengths, rest)


TrainingForward = Callable[[dict[str, Tensor], int, bool], RowScores]


def training_forward(model, compile: bool = False, backend: str = "inductor", packing: bool = False) -> TrainingForward:
    """``(batch, scored, hidden) -> RowScores`` for training steps; compiled on request. Generation
    calls the model itself, so its changing shapes stay eager, and a compiled function (not a module
    attribute) keeps the policy once in the state dict."""

    def forward(batch: dict[str, Tensor], scored: int, hidden: bool) -> RowScores:
        return score_rows(model, batch, scored, hidden, packing)

    return torch.compile(forward, backend=backend) if compile else forward
