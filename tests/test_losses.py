"""sso_lightning.losses against independent references: a naive float64 log-softmax for
sequence_logps, TRL's own DPOTrainer code for DPO/IPO, and a literal transcription of
docs/method.md's equations (plain torch ops, no losses.py helpers) for every SSO term."""

from __future__ import annotations

import zlib
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from sso_lightning.errors import ConfigError
from sso_lightning.losses import (
    DPO,
    IPO,
    SEQUENCE_KEYS,
    SeqLogps,
    SimPO,
    SSOObjective,
    sequence_logps,
    sft,
    steering_weight,
)

# ---------------------------------------------------------------- sequence_logps


def naive_sequence_logps(logits, input_ids, mask):
    """Reference: full float64 log_softmax, gather the next token, masked sum."""
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    token = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    m = mask[:, 1:].double()
    return (token * m).sum(-1), m.sum(-1)


def random_batch(n=4, t=9, v=13, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(n, t, v, generator=gen)).to(dtype)
    ids = torch.randint(0, v, (n, t), generator=gen)
    mask = torch.rand(n, t, generator=gen) < 0.6
    mask[:, 0] = False
    mask[0] = False  # a row with no response tokens
    mask[1, -1] = True  # the last token counts (predicted by position t-2)
    return logits, ids, mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_size", [1, 3, 7, 2048])
def test_sequence_logps_matches_naive(dtype, chunk_size):
    logits, ids, mask = random_batch(dtype=dtype, seed=1)
    sums, lengths = sequence_logps(logits, ids, mask, chunk_size=chunk_size)
    ref_sums, ref_lengths = naive_sequence_logps(logits, ids, mask)  # same (bf16) values, upcast
    assert sums.dtype == torch.float32 and lengths.dtype == torch.float32
    torch.testing.assert_close(sums.double(), ref_sums, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lengths.double(), ref_lengths, rtol=0, atol=0)
    assert sums[0] == 0 and lengths[0] == 0


@pytest.mark.parametrize("chunk_size", [1, 4, 2048])
def test_sequence_logps_gradient_matches_naive(chunk_size):
    logits, ids, mask = random_batch(dtype=torch.float64, seed=2)
    weights = torch.randn(logits.shape[0], dtype=torch.float64)
    mine = logits.clone().requires_grad_()
    sums, _ = sequence_logps(mine, ids, mask, chunk_size=chunk_size)
    (sums * weights).sum().backward()
    ref = logits.clone().requires_grad_()
    (naive_sequence_logps(ref, ids, mask)[0] * weights).sum().backward()
    torch.testing.assert_close(mine.grad, ref.grad, rtol=1e-10, atol=1e-12)


def test_sequence_logps_bf16_gradient_dtype_and_value():
    logits, ids, mask = random_batch(dtype=torch.bfloat16, seed=3)
    mine = logits.clone().requires_grad_()
    sequence_logps(mine, ids, mask, chunk_size=2)[0].sum().backward()
    ref = logits.double().requires_grad_()
    naive_sequence_logps(ref, ids, mask)[0].sum().backward()
    assert mine.grad.dtype == torch.bfloat16
    torch.testing.assert_close(mine.grad.double(), ref.grad, rtol=1e-2, atol=1e-2)


def test_sequence_logps_gradcheck():
    logits, ids, mask = random_batch(n=2, t=5, v=4, dtype=torch.float64, seed=4)
    mask[0, 2] = True
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: sequence_logps(x, ids, mask, chunk_size=2)[0], (logits,))


def test_rows_outside_mask_get_zero_grad():
    logits, ids, mask = random_batch(dtype=torch.float32, seed=5)
    logits.requires_grad_()
    sequence_logps(logits, ids, mask, chunk_size=3)[0].sum().backward()
    predicting = torch.zeros_like(mask)
    predicting[:, :-1] = mask[:, 1:]  # position t predicts token t+1
    assert (logits.grad[~predicting] == 0).all()
    assert (logits.grad[predicting].abs().sum(-1) > 0).all()


def test_all_false_mask():
    logits, ids, _ = random_batch(dtype=torch.bfloat16, seed=6)
    logits.requires_grad_()
    sums, lengths = sequence_logps(logits, ids, torch.zeros(ids.shape, dtype=torch.bool))
    assert (sums == 0).all() and (lengths == 0).all()
    sums.sum().backward()
    assert (logits.grad == 0).all()


def test_mask_on_first_token_is_an_error():
    logits, ids, mask = random_batch(seed=7)
    mask[2, 0] = True
    with pytest.raises(ValueError, match=r"response_mask\[:, 0\]"):
        sequence_logps(logits, ids, mask)


class LargestFloatTensor(TorchDispatchMode):
    """Records the largest float32/64 tensor and the largest tensor of any dtype that any op makes."""

    def __init__(self):
        super().__init__()
        self.float32 = 0
        self.any = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.any = max(self.any, t.numel())
                if t.dtype in (torch.float32, torch.float64):
                    self.float32 = max(self.float32, t.numel())
        return out


def test_no_full_float32_copy_of_bf16_logits():
    n, t, v, chunk = 4, 32, 500, 8
    logits = torch.randn(n, t, v).bfloat16().requires_grad_()
    ids = torch.randint(0, v, (n, t))
    mask = torch.zeros(n, t, dtype=torch.bool)
    mask[:, 4:] = True
    with LargestFloatTensor() as tracker:
        sequence_logps(logits, ids, mask, chunk_size=chunk)[0].sum().backward()
    assert tracker.any >= n * t * v  # the bf16 gradient was seen: backward ops are tracked
    assert tracker.float32 <= chunk * v
    with LargestFloatTensor() as control:  # the tracker does catch a full upcast
        naive_sequence_logps(logits, ids, mask)
    assert control.float32 >= n * (t - 1) * v


# ---------------------------------------------------------------- base losses vs TRL


TRL_VERSION = "1.16."  # the release whose DPOTrainer internals trl_per_example_loss drives (pinned in pyproject)


@pytest.fixture(scope="module")
def trl_trainer_cls():
    """TRL is a dev requirement: without it, or at another release, these tests fail instead of skipping."""
    try:
        import trl
    except ImportError as e:
        pytest.fail(f"TRL is missing ({e}); install the dev extra: pip install -e '.[dev]'")
    if not trl.__version__.startswith(TRL_VERSION):
        pytest.fail(f"trl {trl.__version__} installed; these tests transcribe trl {TRL_VERSION}x internals")
    return trl.DPOTrainer


def trl_per_example_loss(dpo_trainer_cls, loss_type, beta, label_smoothing, chosen, rejected):
    """Run TRL's real DPOTrainer.compute_loss one pair at a time (it returns a batch mean).

    trl 1.16 has no standalone dpo_loss: the loss lives inside _compute_loss, which takes a
    model and a batch. We give it a bare trainer object with the attributes it reads, a fake
    model whose per-token log-probs sum to the wanted sequence log-prob (spread over the
    completion tokens), precomputed reference log-probs, and a completion_mask with each
    response's length (TRL's IPO divides by it itself). Returns per-example losses and
    TRL's logged reward margins."""
    trainer = dpo_trainer_cls.__new__(dpo_trainer_cls)
    trainer.beta, trainer.label_smoothing = beta, label_smoothing
    trainer.loss_types, trainer.loss_weights = [loss_type], [1.0]
    trainer.precompute_ref_logps, trainer.ld_alpha, trainer.f_divergence_type = True, None, "reverse_kl"
    trainer.use_weighting, trainer.aux_loss_enabled, trainer._total_train_tokens = False, False, 0
    trainer.model = torch.nn.Linear(1, 1).eval()
    trainer.accelerator = SimpleNamespace(
        device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x
    )
    losses, margins = [], []
    for i in range(chosen.policy.numel()):
        trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        lens = [int(chosen.length[i]), int(rejected.length[i])]
        t = max(lens) + 2
        completion_mask = torch.zeros(2, t, dtype=torch.long)
        per_token = torch.zeros(2, t - 1, dtype=torch.float64)
        for row, (n, s) in enumerate(zip(lens, [chosen.policy[i], rejected.policy[i]])):
            completion_mask[row, 1 : 1 + n] = 1
            per_token[row, :n] = s / n

        def model(per_token=per_token, **kwargs):
            z = torch.zeros_like(per_token, dtype=torch.float32)
            return SimpleNamespace(log_probs=per_token, entropy=z, mean_logits=z, is_top1=z.bool())

        inputs = {
            "input_ids": torch.zeros(2, t, dtype=torch.long),
            "attention_mask": torch.ones(2, t, dtype=torch.long),
            "completion_mask": completion_mask,
            "ref_chosen_logps": chosen.ref[i : i + 1],
            "ref_rejected_logps": rejected.ref[i : i + 1],
        }
        losses.append(trainer.compute_loss(model, inputs))
        margins.append(trainer._metrics["eval"]["rewards/margins"][0])
    return torch.stack(losses), torch.tensor(margins, dtype=torch.float64)


def random_seq(b=6, seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    length = torch.randint(1, 13, (b,), generator=gen).double()
    policy = -(length * (0.2 + 3 * torch.rand(b, generator=gen, dtype=torch.float64)))
    ref = policy + 2 * torch.randn(b, generator=gen, dtype=torch.float64)
    return SeqLogps(policy.requires_grad_(requires_grad), ref, length)


@pytest.mark.parametrize("beta", [0.05, 0.1, 0.5])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_dpo_matches_trl(trl_trainer_cls, beta, label_smoothing):
    chosen, rejected = random_seq(seed=10), random_seq(seed=11)
    # trl 1.16's "sigmoid" branch ignores label_smoothing; the conservative-DPO formula
    # -(1-ls) logsigmoid(beta d) - ls logsigmoid(-beta d) lives in its "aot" branch, which
    # sorts d over the batch first. With one pair per call the sort is the identity, so
    # "aot" is exactly conservative DPO (and equals "sigmoid" at ls = 0, checked below).
    loss_type = "sigmoid" if label_smoothing == 0 else "aot"
    expected, trl_margin = trl_per_example_loss(trl_trainer_cls, loss_type, beta, label_smoothing, chosen, rejected)
    out = DPO(beta=beta, label_smoothing=label_smoothing)(chosen, rejected)
    torch.testing.assert_close(out.loss, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(out.margin, trl_margin, rtol=1e-6, atol=1e-12)
    if label_smoothing == 0:
        aot, _ = trl_per_example_loss(trl_trainer_cls, "aot", beta, 0.0, chosen, rejected)
        torch.testing.assert_close(out.loss, aot, rtol=1e-6, atol=0)


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_ipo_matches_trl(trl_trainer_cls, beta):
    chosen, rejected = random_seq(seed=12), random_seq(seed=13)
    expected, _ = trl_per_example_loss(trl_trainer_cls, "ipo", beta, 0.0, chosen, rejected)
    out = IPO(beta=beta)(chosen, rejected)
    torch.testing.assert_close(out.loss, expected, rtol=1e-6, atol=0)
    h = (chosen.policy / chosen.length - chosen.ref / chosen.length) - (
        rejected.policy / rejected.length - rejected.ref / rejected.length
    )
    torch.testing.assert_close(out.margin, h, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("beta,target", [(2.0, 0.5), (10.0, 0.0), (0.5, 1.5)])
def test_simpo_matches_formula(beta, target):
    chosen, rejected = random_seq(seed=14), random_seq(seed=15)
    a_w = chosen.policy / chosen.length
    a_l = rejected.policy / rejected.length
    out = SimPO(beta=beta, target_margin=target)(chosen, rejected)
    torch.testing.assert_close(out.loss, -F.logsigmoid(beta * (a_w - a_l) - target), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.margin, beta * (a_w - a_l), rtol=1e-12, atol=1e-12)
    assert SimPO.needs_reference is False and DPO.needs_reference and IPO.needs_reference


def test_sft_and_means():
    seq = random_seq(seed=16)
    torch.testing.assert_close(sft(seq), -seq.policy / seq.length)
    torch.testing.assert_close(seq.mean(), seq.policy / seq.length)
    torch.testing.assert_close(seq.ref_mean(), seq.ref / seq.length)


@pytest.mark.parametrize("alpha", [0.0, 0.66, 1.0])
@pytest.mark.parametrize("detach", [False, True])
def test_steering_weight(alpha, detach):
    yp, ym = random_seq(seed=17, requires_grad=True), random_seq(seed=18, requires_grad=True)
    w = steering_weight(yp, ym, alpha=alpha, detach=detach)
    expected = 1 / (1 + torch.exp(alpha * yp.policy / yp.length + (1 - alpha) * ym.policy / ym.length))
    torch.testing.assert_close(w, expected.detach(), rtol=1e-12, atol=1e-12)
    assert w.requires_grad is (not detach)


# ---------------------------------------------------------------- SSO objective vs docs/method.md


def sso_data(b=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    data = {}
    for key in SEQUENCE_KEYS:
        n = torch.randint(1, 20, (b,), generator=gen).double()
        s = -(n * (0.1 + 2.5 * torch.rand(b, generator=gen, dtype=torch.float64)))
        s_ref = s + 1.5 * torch.randn(b, generator=gen, dtype=torch.float64)
        data[key] = (s.requires_grad_(), s_ref, n)
    return data


def paper_l_base(base, params, win, lose):
    """l_base(c, y_w, y_l) from docs/method.md, on (s, s_ref, |y|) triples; returns (loss, margin)."""
    (s_w, r_w, n_w), (s_l, r_l, n_l) = win, lose
    beta = params["beta"]
    if base == "dpo":
        ls = params.get("label_smoothing", 0.0)
        h = (s_w - r_w) - (s_l - r_l)
        return -(1 - ls) * F.logsigmoid(beta * h) - ls * F.logsigmoid(-beta * h), beta * h
    if base == "ipo":
        h = (s_w / n_w - r_w / n_w) - (s_l / n_l - r_l / n_l)
        return (h - 1 / (2 * beta)) ** 2, h
    a_w, a_l = s_w / n_w, s_l / n_l  # simpo
    return -F.logsigmoid(beta * (a_w - a_l) - params["target_margin"]), beta * (a_w - a_l)


def paper_objective(
    data,
    base,
    params,
    g=0.1,
    gamma=0.1,
    policy_sft=0.0,
    plus=True,
    minus="paper",
    weight=True,
    alpha=0.66,
    detach_weight=False,
):
    """docs/method.md, combined scheme, written out: L = l_base(x,y+,y-) + lambda_sft l_sft(x,y+) + W g (L+ + L-)."""

    def l_base(c_w, c_l):
        return paper_l_base(base, params, data[c_w], data[c_l])

    def l_sft(c_y):
        s, _, n = data[c_y]
        return -(s / n)

    s_xyp, _, n_xyp = data["x|y+"]
    s_xym, _, n_xym = data["x|y-"]
    w = torch.sigmoid(-(alpha * (s_xyp / n_xyp) + (1 - alpha) * (s_xym / n_xym)))
    if detach_weight:
        w = w.detach()
    if not weight:
        w = torch.ones_like(s_xyp)

    p_loss, p_margin = l_base("x|y+", "x|y-")
    policy = p_loss + policy_sft * l_sft("x|y+")
    expected = {
        "loss_policy": policy.mean(),
        "margin_policy": p_margin.mean(),
        "acc_policy": (p_margin > 0).double().mean(),
    }
    l_plus = l_minus = torch.zeros_like(policy)
    if plus:
        pl_loss, pl_margin = l_base("x+|y+", "x+|y-")
        l_plus = pl_loss + gamma * l_sft("x+|y+")
        expected |= {
            "loss_plus": l_plus.mean(),
            "margin_plus": pl_margin.mean(),
            "acc_plus": (pl_margin > 0).double().mean(),
        }
    if minus == "paper":
        mi_loss, mi_margin = l_base("x-|yo", "x-|y+")
        l_minus = mi_loss + gamma * l_sft("x-|yo")
    elif minus == "naive":
        mi_loss, mi_margin = l_base("x-|y-", "x-|y+")
        l_minus = mi_loss + gamma * l_sft("x-|y-")
    if minus != "off":
        expected |= {
            "loss_minus": l_minus.mean(),
            "margin_minus": mi_margin.mean(),
            "acc_minus": (mi_margin > 0).double().mean(),
        }
    if weight:
        expected["W"] = w.mean()
    total = policy + w * g * (l_plus + l_minus) if g > 0 else w * policy
    expected["loss"] = total.mean()
    return expected


BASES = {
    "dpo": (lambda p: DPO(**p), {"beta": 0.1}),
    "dpo_ls": (lambda p: DPO(**p), {"beta": 0.2, "label_smoothing": 0.1}),
    "ipo": (lambda p: IPO(**p), {"beta": 0.1}),
    "simpo": (lambda p: SimPO(**p), {"beta": 2.0, "target_margin": 0.5}),
}

VARIANTS = {
    "pbaa": dict(g=0.0, plus=False, minus="off", weight=False),
    "g0_with_W": dict(g=0.0, plus=False, minus="off", weight=True),
    "plus_only": dict(minus="off"),
    "minus_only": dict(plus=False),
    "minus_only_naive": dict(plus=False, minus="naive"),
    "all": dict(),
    "all_naive": dict(minus="naive"),
    "all_without_W": dict(weight=False),
    "all_detached_W": dict(detach_weight=True),
    "policy_sft": dict(policy_sft=0.5, g=0.2, gamma=0.3, alpha=0.3),
    "alpha_0": dict(alpha=0.0, gamma=0.0),
    "alpha_1": dict(alpha=1.0, g=1.0),
    "g_without_terms": dict(plus=False, minus="off"),
}


@pytest.mark.parametrize("base_name", list(BASES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_sso_objective_matches_paper(base_name, variant):
    make, params = BASES[base_name]
    kwargs = VARIANTS[variant]
    data = sso_data(seed=zlib.crc32(f"{base_name}/{variant}".encode()) % 1000)  # deterministic per case
    seqs = {k: SeqLogps(*v) for k, v in data.items()}
    objective = SSOObjective(make(params), **kwargs)
    out = objective(seqs)
    expected = paper_objective(data, base_name.split("_")[0], params, **kwargs)
    assert set(out) == set(expected)
    for key, value in expected.items():
        assert out[key].dim() == 0
        torch.testing.assert_close(out[key].double(), value.detach(), rtol=1e-10, atol=1e-12, msg=key)
    # the gradient too, for every policy sequence (W path included); unread ones get none
    leaves = [data[k][0] for k in SEQUENCE_KEYS]
    got = torch.autograd.grad(out["loss"], leaves, allow_unused=True)
    want = torch.autograd.grad(expected["loss"], leaves, allow_unused=True)
    required = objective.required_sequences()
    for key, a, b in zip(SEQUENCE_KEYS, got, want):
        if key not in required:
            assert a is None, key
            continue
        torch.testing.assert_close(a, b if b is not None else torch.zeros_like(a), rtol=1e-10, atol=1e-12, msg=key)


def test_pbaa_is_the_base_loss():
    data = sso_data(seed=3)
    seqs = {k: SeqLogps(*v) for k, v in data.items()}
    out = SSOObjective(DPO(beta=0.1), g=0, plus=False, minus="off", weight=False)(seqs)
    loss, _ = paper_l_base("dpo", {"beta": 0.1}, data["x|y+"], data["x|y-"])
    torch.testing.assert_close(out["loss"], loss.mean(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("g,kwargs", [(0.1, {}), (0.0, dict(plus=False, minus="off"))])
def test_weight_is_attached_by_default(g, kwargs):
    """d loss / d s(x,y+) includes the W path unless detach_weight; the difference is exactly
    dW/ds * g * (L+ + L-) / B (or dW/ds * P / B when g = 0)."""
    data = sso_data(seed=4)
    seqs = {k: SeqLogps(*v) for k, v in data.items()}
    s, _, n = data["x|y+"]
    attached = torch.autograd.grad(SSOObjective(DPO(), g=g, **kwargs)(seqs)["loss"], s)[0]
    detached = torch.autograd.grad(SSOObjective(DPO(), g=g, detach_weight=True, **kwargs)(seqs)["loss"], s)[0]
    assert not torch.allclose(attached, detached)
    alpha = 0.66
    w = torch.sigmoid(-(alpha * s / n + (1 - alpha) * data["x|y-"][0] / data["x|y-"][2])).detach()
    dw_ds = -w * (1 - w) * alpha / n
    if g > 0:  # L+ + L- (paper form), transcribed from docs/method.md

        def l_base(c_w, c_l):
            return paper_l_base("dpo", {"beta": 0.1}, data[c_w], data[c_l])[0]

        steer = l_base("x+|y+", "x+|y-") - 0.1 * data["x+|y+"][0] / data["x+|y+"][2]
        steer = steer + l_base("x-|yo", "x-|y+") - 0.1 * data["x-|yo"][0] / data["x-|yo"][2]
        through_w = dw_ds * g * steer.detach() / n.numel()
    else:  # W multiplies the policy term
        policy = paper_l_base("dpo", {"beta": 0.1}, data["x|y+"], data["x|y-"])[0]
        through_w = dw_ds * policy.detach() / n.numel()
    torch.testing.assert_close(attached - detached, through_w, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("base", [DPO(beta=0.1, label_smoothing=0.1), IPO(beta=0.1)])
def test_reference_gets_no_grad(base):
    data = sso_data(seed=5)
    seqs = {k: SeqLogps(s, r.clone().requires_grad_(), n) for k, (s, r, n) in data.items()}
    SSOObjective(base, minus="naive")(seqs)["loss"].backward()
    SSOObjective(base)(seqs)["loss"].backward()
    assert all(seq.ref.grad is None for seq in seqs.values())
    assert all(seqs[k].policy.grad is not None for k in SSOObjective(base).required_sequences())


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        (dict(g=0, plus=False, minus="off", weight=False), ("x|y+", "x|y-")),
        (dict(g=0, plus=False, minus="off"), ("x|y+", "x|y-")),
        (dict(), ("x|y+", "x|y-", "x+|y+", "x+|y-", "x-|yo", "x-|y+")),
        (dict(weight=False), ("x|y+", "x|y-", "x+|y+", "x+|y-", "x-|yo", "x-|y+")),
        (dict(minus="naive"), ("x|y+", "x|y-", "x+|y+", "x+|y-", "x-|y+", "x-|y-")),
        (dict(minus="off"), ("x|y+", "x|y-", "x+|y+", "x+|y-")),
        (dict(plus=False), ("x|y+", "x|y-", "x-|yo", "x-|y+")),
        (dict(plus=False, minus="naive"), ("x|y+", "x|y-", "x-|y+", "x-|y-")),
    ],
)
def test_required_sequences(kwargs, expected):
    objective = SSOObjective(DPO(), **kwargs)
    assert objective.required_sequences() == expected
    data = sso_data(b=3, seed=6)
    objective({k: SeqLogps(*data[k]) for k in expected})  # enough to run
    with pytest.raises(KeyError, match="x\\|y-"):
        objective({k: SeqLogps(*data[k]) for k in expected if k != "x|y-"})


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda: DPO(beta=-1.0), r"^loss\.base\.beta must be > 0 \(got -1\.0\)$"),
        (lambda: DPO(beta=0.0), r"^loss\.base\.beta must be > 0 \(got 0\.0\)$"),
        (lambda: IPO(beta=0), r"^loss\.base\.beta must be > 0"),
        (lambda: SimPO(beta=-2.0), r"^loss\.base\.beta must be > 0"),
        (lambda: DPO(label_smoothing=0.5), r"^loss\.base\.label_smoothing must be in \[0, 0\.5\) \(got 0\.5\)$"),
        (lambda: DPO(label_smoothing=-0.1), r"^loss\.base\.label_smoothing must be in \[0, 0\.5\)"),
        (lambda: SSOObjective(DPO(), minus="x"), r"^loss\.minus must be one of paper, naive, off \(got 'x'\)$"),
        (lambda: SSOObjective(DPO(), g=-0.1), r"^loss\.g must be >= 0 \(got -0\.1\)$"),
        (lambda: SSOObjective(DPO(), gamma=-1), r"^loss\.gamma must be >= 0"),
        (lambda: SSOObjective(DPO(), policy_sft=-1), r"^loss\.policy_sft must be >= 0"),
        (lambda: SSOObjective(DPO(), alpha=-0.1), r"^loss\.alpha must be in \[0, 1\] \(got -0\.1\)$"),
        (lambda: SSOObjective(DPO(), alpha=1.5), r"^loss\.alpha must be in \[0, 1\]"),
        (lambda: SSOObjective(DPO(), g=0), r"^loss\.g=0 .*zero; set loss\.plus=false loss\.minus=off, or loss\.g > 0$"),
        (lambda: SSOObjective(DPO(), g=0, plus=False), r"loss\.minus=paper\) by zero"),
        (lambda: SSOObjective(DPO(), g=0, minus="off"), r"loss\.plus=true, loss\.minus=off\) by zero"),
        (
            lambda: SSOObjective(DPO(), weight=False, detach_weight=True),
            r"^loss\.detach_weight=true needs loss\.weight=true",
        ),
    ],
)
def test_config_errors(build, message):
    with pytest.raises(ConfigError, match=message) as info:
        build()
    assert "\n" not in str(info.value)
