"""Response log-probs straight from the final hidden states, without the full logits.

A causal LM's head turns every position into a vocabulary-sized row; with a 128k vocabulary
that ``[rows, length, vocab]`` tensor outweighs the model's activations, yet a preference loss
reads one entry per response token. Here the head is applied only at the positions that predict
a response token, a chunk of positions at a time, in forward and again in backward: no more
than one chunk's logits ever exist.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sso_lightning.losses import per_row, response_tokens

CHUNK_ELEMENTS = 2**26  # logits per chunk: 256 MB in float32


def compute_dtype(weight: Tensor) -> torch.dtype:
    """The dtype the head's matmul runs in: autocast's when it is on (as ``nn.Linear`` would), else the weight's."""
    device = weight.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype


class _HeadTokenLogProbs(torch.autograd.Function):
    """log softmax(h W^T + b)[label] per row of ``hidden``; saves no logits, only their log-sum-exp.
    Accumulates in float32 (float64 for float64 inputs, so gradcheck can verify it)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk_size: int, dtype: torch.dtype):
        acc = torch.promote_types(dtype, torch.float32)
        out = torch.empty(hidden.shape[0], dtype=acc, device=hidden.device)
        lse = torch.empty_like(out)
        with torch.autocast(hidden.device.type, enabled=False):
            w, b = weight.to(dtype), bias.to(dtype) if bias is not None else None
            for s in range(0, hidden.shape[0], chunk_size):
                e = s + chunk_size
                logits = F.linear(hidden[s:e].to(dtype), w, b).to(acc)
                lse[s:e] = logits.logsumexp(-1)
                out[s:e] = logits.gather(-1, labels[s:e, None]).squeeze(-1) - lse[s:e]
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        ctx.chunk_size, ctx.dtype = chunk_size, dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        dtype, acc = ctx.dtype, lse.dtype
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_bias else None
        with torch.autocast(hidden.device.type, enabled=False):
            w, b = weight.to(dtype), bias.to(dtype) if bias is not None else None
            for s in range(0, hidden.shape[0], ctx.chunk_size):
                e = s + ctx.chunk_size
                h = hidden[s:e].to(dtype)
                g = grad_out[s:e].to(acc)[:, None]
                d_logits = -(F.linear(h, w, b).to(acc) - lse[s:e, None]).exp() * g  # -g * softmax
                d_logits.scatter_add_(-1, labels[s:e, None], g)  # + g * onehot(label)
                d = d_logits.to(dtype)
                if need_hidden:
                    grad_hidden[s:e] = (d @ w).to(hidden.dtype)
                if need_weight:
                    grad_weight += (d.T @ h).to(acc)
                if need_bias:
                    grad_bias += d_logits.sum(0)
        grad_weight = grad_weight.to(weight.dtype) if need_weight else None
        grad_bias = grad_bias.to(bias.dtype) if need_bias else None
        return grad_hidden, grad_weight, grad_bias, None, None, None


def head_sequence_logps(
    hidden: Tensor, index: Tensor, input_ids: Tensor, response_mask: Tensor, head: nn.Linear
) -> tuple[Tensor, Tensor]:
    """Summed log-probs and lengths (float32 [N]) of the masked tokens of each row of a batch.

    ``hidden`` [M, H]: final hidden states of every position, flat; ``index`` [N, T]: where token
    (n, t) of the batch sits in ``hidden`` (the identity for a padded batch, the packing's map for
    packed rows); ``input_ids`` and ``response_mask`` [N, T], the mask False at t = 0."""
    seq, pos = response_tokens(response_mask)
    predictors = index[seq, pos - 1]  # token t is predicted by the state at t - 1
    dtype = compute_dtype(head.weight)
    chunk = max(1, CHUNK_ELEMENTS // head.weight.shape[0])
    token_logps = _HeadTokenLogProbs.apply(
        hidden[predictors], head.weight, head.bias, input_ids[seq, pos].long(), chunk, dtype
    )
    return per_row(token_logps, seq, response_mask)
