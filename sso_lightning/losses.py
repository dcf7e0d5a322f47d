"""Pure tensor functions for SSO (docs/method.md): per-sequence log-probs, base pairwise
losses, the SFT term, the steering terms L+ and L-, the weight W, and the objective in
each phase. No Lightning, no I/O, no data layer."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sso_lightning.errors import ConfigError
from sso_lightning.sequences import PLAIN_KEYS, SEQUENCE_KEYS

if TYPE_CHECKING:
    from sso_lightning.auxiliary import AuxiliaryLoss


class SeqLogps(NamedTuple):
    """Sequence log-probs of one batch of (prompt, response) pairs."""

    policy: Tensor  # [B] summed response log-probs under the policy (carries grad)
    ref: Tensor  # [B] the same under the reference (no grad); zeros for reference-free losses
    length: Tensor  # [B] float, number of response tokens

    def mean(self) -> Tensor:
        """a(c, y): the per-token mean log-prob, length-independent."""
        return self.policy / self.length

    def ref_mean(self) -> Tensor:
        return self.ref / self.length


class _TokenLogProbs(torch.autograd.Function):
    """log p(label) at selected rows of flattened logits, upcasting one chunk at a time:
    bf16 models have huge vocabularies, so no float32 copy of the full logits may exist
    in forward or backward. Saves only the logits (the input itself), indices and lse.
    Computes in float32, or float64 for float64 logits (so gradcheck can verify it)."""

    @staticmethod
    def forward(ctx, logits: Tensor, positions: Tensor, labels: Tensor, chunk_size: int) -> Tensor:
        acc = torch.promote_types(logits.dtype, torch.float32)
        out = torch.empty(positions.numel(), dtype=acc, device=logits.device)
        lse = torch.empty_like(out)
        for s in range(0, positions.numel(), chunk_size):
            e = s + chunk_size
            rows = logits[positions[s:e]].to(acc)
            lse[s:e] = rows.logsumexp(-1)
            out[s:e] = rows.gather(-1, labels[s:e, None]).squeeze(-1) - lse[s:e]
        ctx.save_for_backward(logits, positions, labels, lse)
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        logits, positions, labels, lse = ctx.saved_tensors
        grad = torch.zeros_like(logits)  # rows that predict no counted token stay zero
        for s in range(0, positions.numel(), ctx.chunk_size):
            e = s + ctx.chunk_size
            g = grad_out[s:e].to(lse.dtype)[:, None]
            rows = -(logits[positions[s:e]].to(lse.dtype) - lse[s:e, None]).exp() * g  # -g * softmax
            rows.scatter_add_(-1, labels[s:e, None], g)  # + g * onehot(label)
            grad.index_add_(0, positions[s:e], rows.to(logits.dtype))
        return grad, None, None, None


def sequence_logps(
    logits: Tensor, input_ids: Tensor, response_mask: Tensor, chunk_size: int = 2048
) -> tuple[Tensor, Tensor]:
    """Summed log-probs and lengths (float32 [N]) of the masked tokens of each row.

    logits [N, T, V] (any float dtype), input_ids and response_mask [N, T]. Token t is
    predicted by logits[:, t-1], so the mask must be False at t = 0. Only `chunk_size`
    positions at a time are upcast to float32. (float64 logits give float64 sums.)"""
    if logits.dim() != 3 or input_ids.shape != logits.shape[:2] or response_mask.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits [N, T, V] and input_ids, response_mask [N, T]; got {tuple(logits.shape)}, "
            f"{tuple(input_ids.shape)}, {tuple(response_mask.shape)}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (got {chunk_size})")
    n, t, v = logits.shape
    seq, pos = response_tokens(response_mask)
    flat_positions = seq * t + pos - 1  # the row of logits.view(n*t, v) that predicts token (seq, pos)
    labels = input_ids[seq, pos].long()
    token_logps = _TokenLogProbs.apply(logits.reshape(n * t, v), flat_positions, labels, chunk_size)
    return per_row(token_logps, seq, response_mask)


def response_tokens(response_mask: Tensor) -> tuple[Tensor, Tensor]:
    """(row, position) of every counted token. Token t is predicted at t - 1, so the mask must be
    False at t = 0."""
    response_mask = response_mask.bool()
    if response_mask[:, 0].any():
        raise ValueError("response_mask[:, 0] must be False: the first token has no prediction")
    return response_mask.nonzero(as_tuple=True)


def per_row(token_logps: Tensor, seq: Tensor, response_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's summed token log-probs (``seq``: the row of each token) and response length."""
    sums = torch.zeros(response_mask.shape[0], dtype=token_logps.dtype, device=token_logps.device)
    return sums.index_add(0, seq, token_logps), response_mask.bool().sum(-1).float()


class PairLoss(NamedTuple):
    loss: Tensor  # [B] per-example loss
    margin: Tensor  # [B] implicit reward margin; > 0 means the pair is ranked right


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ConfigError(f"loss.base.beta must be > 0 (got {beta})")


@dataclass(frozen=True)
class DPO:
    """-log sigmoid(beta * h), h = policy-vs-reference log-ratio of chosen minus rejected;
    label_smoothing > 0 gives conservative DPO (labels assumed flipped with that probability).
    The reference is detached: it must never receive gradients."""

    beta: float = 0.1
    label_smoothing: float = 0.0
    needs_reference: ClassVar[bool] = True

    def __post_init__(self):
        _check_beta(self.beta)
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"loss.base.label_smoothing must be in [0, 0.5) (got {self.label_smoothing})")

    def __call__(self, chosen: SeqLogps, rejected: SeqLogps) -> PairLoss:
        h = (chosen.policy - chosen.ref.detach()) - (rejected.policy - rejected.ref.detach())
        z = self.beta * h
        loss = -(1 - self.label_smoothing) * F.logsigmoid(z) - self.label_smoothing * F.logsigmoid(-z)
        return PairLoss(loss, z)


@dataclass(frozen=True)
class IPO:
    """(h - 1/(2 beta))^2 with h from per-token mean log-probs, as TRL and LLaMA-Factory do
    (summed log-probs would make the squared loss grow with response length)."""

    beta: float = 0.1
    needs_reference: ClassVar[bool] = True

    def __post_init__(self):
        _check_beta(self.beta)

    def __call__(self, chosen: SeqLogps, rejected: SeqLogps) -> PairLoss:
        h = (chosen.mean() - chosen.ref_mean().detach()) - (rejected.mean() - rejected.ref_mean().detach())
        return PairLoss((h - 1 / (2 * self.beta)) ** 2, h)


@dataclass(frozen=True)
class SimPO:
    """Reference-free: -log sigmoid(beta * (a_w - a_l) - target_margin); ref is ignored."""

    beta: float = 2.0
    target_margin: float = 0.5
    needs_reference: ClassVar[bool] = False

    def __post_init__(self):
        _check_beta(self.beta)

    def __call__(self, chosen: SeqLogps, rejected: SeqLogps) -> PairLoss:
        margin = self.beta * (chosen.mean() - rejected.mean())
        return PairLoss(-F.logsigmoid(margin - self.target_margin), margin)


def sft(seq: SeqLogps) -> Tensor:
    """Mean token negative log-likelihood, -a(c, y): keeps the preferred answer likely."""
    return -seq.mean()


def steering_weight(
    plain_chosen: SeqLogps, plain_rejected: SeqLogps, alpha: float = 0.66, detach: bool = False
) -> Tensor:
    """W = sigmoid(-(alpha a(x,y+) + (1-alpha) a(x,y-))) on the plain query x: near 1 for
    off-policy pairs, toward 0.5 for on-policy ones. Attached to the graph (as in the
    authors' code) unless ``detach``."""
    w = torch.sigmoid(-(alpha * plain_chosen.mean() + (1 - alpha) * plain_rejected.mean()))
    return w.detach() if detach else w


MINUS_FORMS = ("paper", "naive", "off")
PHASES = ("combined", "generator", "policy")


@dataclass
class SSOObjective:
    """The SSO objective, per example, batch mean. ``phase`` names the loss a scheme's
    phase trains (docs/method.md; a scheme is a sequence of these phases):

    * combined (scheme combined): P + W*g*(L+ + L-) with P = l_base(x,y+,y-) + policy_sft*l_sft(x,y+);
      with g = 0 the authors' code multiplies P itself by W. ``sft_in_weight=False`` moves the
      SFT parts of L+ and L- out of W, as the authors' released code has them:
      P + g*gamma*(l_sft(x+,y+) + l_sft(x-,yo)) + W*g*(l_base(x+,y+,y-) + l_base(x-,yo,y+)).
    * generator / policy (scheme two_stage): the data generator learns L+ + L- alone;
      the policy learns P alone, on the generator's pairs. W and g weigh the two against
      each other in one loss, so they play no part here.

    ``aux`` (an auxiliary loss, e.g. SPO) adds ``aux.weight`` times its loss in every phase.

    PBAA is SSOObjective(base, g=0, plus=False, minus="off", weight=False)."""

    base: Callable[[SeqLogps, SeqLogps], PairLoss]
    g: float = 0.1
    gamma: float = 0.1
    policy_sft: float = 0.0
    plus: bool = True
    minus: str = "paper"
    weight: bool = True
    alpha: float = 0.66
    detach_weight: bool = False
    sft_in_weight: bool = True
    aux: AuxiliaryLoss | None = None

    def __post_init__(self):
        if self.minus not in MINUS_FORMS:
            raise ConfigError(f"loss.minus must be one of {', '.join(MINUS_FORMS)} (got {self.minus!r})")
        for name in ("g", "gamma", "policy_sft"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"loss.{name} must be >= 0 (got {getattr(self, name)})")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"loss.alpha must be in [0, 1] (got {self.alpha})")
        if self.g == 0 and (self.plus or self.minus != "off"):
            raise ConfigError(
                f"loss.g=0 would multiply the steering terms (loss.plus={str(self.plus).lower()}, "
                f"loss.minus={self.minus}) by zero; set loss.plus=false loss.minus=off, or loss.g > 0"
            )
        if self.detach_weight and not self.weight:
            raise ConfigError("loss.detach_weight=true needs loss.weight=true (there is no W to detach)")

    @property
    def steers(self) -> bool:
        return self.plus or self.minus != "off"

    def required_sequences(self, phase: str = "combined") -> tuple[str, ...]:
        """The sequences a phase reads, in SEQUENCE_KEYS order (so callers run forwards
        only for those)."""
        check_phase(phase)
        needed = set(PLAIN_KEYS) if phase != "generator" else set()  # the policy term, and W
        if phase != "policy":
            if self.plus:
                needed |= {"x+|y+", "x+|y-"}
            if self.minus == "paper":
                needed |= {"x-|yo", "x-|y+"}
            elif self.minus == "naive":
                needed |= {"x-|y-", "x-|y+"}
        return tuple(k for k in SEQUENCE_KEYS if k in needed)

    def __call__(
        self,
        seqs: Mapping[str, SeqLogps],
        phase: str = "combined",
        aux_terms: tuple[Tensor, Mapping[str, Tensor]] | None = None,
    ) -> dict[str, Tensor]:
        """``aux_terms``: the auxiliary loss's (loss, metrics) on this batch, required with ``aux``."""
        missing = [k for k in self.required_sequences(phase) if k not in seqs]
        if missing:
            raise KeyError(f"SSOObjective needs sequences {missing} (has {sorted(seqs)})")
        pairs, terms, steering_sft = {}, {}, []
        if phase != "generator":
            pairs["policy"] = self.base(seqs["x|y+"], seqs["x|y-"])
            terms["loss_policy"] = pairs["policy"].loss + self.policy_sft * sft(seqs["x|y+"])
        if phase != "policy":
            if self.plus:
                pairs["plus"] = self.base(seqs["x+|y+"], seqs["x+|y-"])
                steering_sft.append(self.gamma * sft(seqs["x+|y+"]))
                terms["loss_plus"] = pairs["plus"].loss + steering_sft[-1]
            if self.minus != "off":
                preferred = "x-|yo" if self.minus == "paper" else "x-|y-"
                pairs["minus"] = self.base(seqs[preferred], seqs["x-|y+"])
                steering_sft.append(self.gamma * sft(seqs[preferred]))
                terms["loss_minus"] = pairs["minus"].loss + steering_sft[-1]
        steering = [terms[k] for k in ("loss_plus", "loss_minus") if k in terms]
        w = None
        if phase == "generator":
            total = sum(steering[1:], steering[0])
        elif phase == "policy":
            total = terms["loss_policy"]
        else:
            policy = terms["loss_policy"]
            w = steering_weight(seqs["x|y+"], seqs["x|y-"], self.alpha, self.detach_weight) if self.weight else None
            zero = torch.zeros_like(policy)
            if self.g > 0 and self.sft_in_weight:
                total = policy + (w if w is not None else 1.0) * self.g * sum(steering, zero)
            elif self.g > 0:
                steered_pairs = sum((pairs[k].loss for k in ("plus", "minus") if k in pairs), zero)
                total = (
                    policy + self.g * sum(steering_sft, zero) + (w if w is not None else 1.0) * self.g * steered_pairs
                )
            else:
                total = policy * w if w is not None else policy
        out = {"loss": total.mean(), **{k: v.detach().mean() for k, v in terms.items()}}
        if self.aux is not None:
            if aux_terms is None:
                raise ValueError("an objective with an auxiliary loss needs its (loss, metrics) on the batch")
            aux_loss, aux_metrics = aux_terms
            out["loss"] = out["loss"] + self.aux.weight * aux_loss
            out.update({k: v.detach() for k, v in aux_metrics.items()})
        if w is not None:
            out["W"] = w.detach().mean()
        for name, pair in pairs.items():
            margin = pair.margin.detach()
            out[f"margin_{name}"] = margin.mean()
            out[f"acc_{name}"] = (margin > 0).float().mean()
        return out


def check_phase(phase: str) -> None:
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES} (got {phase!r})")
