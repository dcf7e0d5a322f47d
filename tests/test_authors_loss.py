"""``variant=sso_authors`` computes the authors' released objective exactly.

The reference is a transcription of icip-cas/SSO's trainer (myllamafactory/src/llamafactory/train/dpo/
ssotrainer.py at 1c234bf, ``get_batch_loss_metrics`` and ``compute_preference_loss`` with
G_function=True, W_function=True, pref_loss=sigmoid) and of the DPO loss of the TRL release it pins
(0.9.x ``dpo_loss``, sigmoid), written with plain torch ops on per-sequence summed log-probs. Their
data processor builds the pairs (x: y+ > y-), p = (x+: y+ > y-) and n = (x-: yo > y+).
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from sso_lightning.__main__ import CONFIG_DIR
from sso_lightning.losses import SeqLogps

KEYS = ("x|y+", "x|y-", "x+|y+", "x+|y-", "x-|yo", "x-|y+")


def authors_loss(s: dict, beta: float, G_beta: float, W_alpha: float, pref_ftx: float, label_smoothing: float = 0.0):
    """s[key] = (policy summed log-prob, reference summed log-prob, response length), tensors [B]."""

    def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected):  # TRL 0.9, loss_type="sigmoid"
        logits = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
        return -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing

    (chosen_logps, ref_chosen, chosen_length), (rejected_logps, ref_rejected, rejected_length) = s["x|y+"], s["x|y-"]
    (p_chosen_logps, p_ref_chosen, p_chosen_length), (p_rejected_logps, p_ref_rejected, _) = s["x+|y+"], s["x+|y-"]
    (n_chosen_logps, n_ref_chosen, n_chosen_length), (n_rejected_logps, n_ref_rejected, _) = s["x-|yo"], s["x-|y+"]

    # compute_preference_loss
    losses = dpo_loss(chosen_logps, rejected_logps, ref_chosen, ref_rejected)
    p_losses = dpo_loss(p_chosen_logps, p_rejected_logps, p_ref_chosen, p_ref_rejected)
    n_losses = dpo_loss(n_chosen_logps, n_rejected_logps, n_ref_chosen, n_ref_rejected)
    exlosses = G_beta * p_losses + G_beta * n_losses
    # get_batch_loss_metrics
    policy_chosen_logps_avg = chosen_logps / chosen_length
    policy_rejected_logps_avg = rejected_logps / rejected_length
    p_policy_chosen_logps_avg = p_chosen_logps / p_chosen_length
    n_policy_chosen_logps_avg = n_chosen_logps / n_chosen_length
    sft_loss = -policy_chosen_logps_avg
    p_sft_loss = -p_policy_chosen_logps_avg
    n_sft_loss = -n_policy_chosen_logps_avg
    if pref_ftx > 1e-6:
        losses = losses + pref_ftx * (sft_loss + G_beta * p_sft_loss + G_beta * n_sft_loss)
    weight = torch.sigmoid(-(W_alpha * policy_chosen_logps_avg + (1 - W_alpha) * policy_rejected_logps_avg))
    losses = weight * exlosses + losses
    return losses.mean()


def authors_objective(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["variant=sso_authors", *overrides])
    return cfg, instantiate(cfg.loss)


def random_batch(seed: int, size: int = 16):
    generator = torch.Generator().manual_seed(seed)
    lengths = {k: torch.randint(1, 60, (size,), generator=generator).double() for k in KEYS}
    policy = {k: (-torch.rand(size, generator=generator, dtype=torch.float64) * 3 * lengths[k]) for k in KEYS}
    ref = {k: policy[k].detach() + torch.randn(size, generator=generator, dtype=torch.float64) * 4 for k in KEYS}
    return {k: policy[k].requires_grad_() for k in KEYS}, ref, lengths


@pytest.mark.parametrize("pref_ftx", [0.0, 0.3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sso_authors_equals_the_released_loss_and_its_gradients(pref_ftx, seed):
    cfg, objective = authors_objective(f"loss.gamma={pref_ftx}")
    assert (cfg.loss.base.beta, cfg.loss.g, cfg.loss.alpha, cfg.loss.policy_sft) == (0.2, 0.1, 0.66, pref_ftx)
    policy, ref, lengths = random_batch(seed)
    ours = objective({k: SeqLogps(policy[k], ref[k], lengths[k]) for k in KEYS})["loss"]
    ours_grads = torch.autograd.grad(ours, [policy[k] for k in KEYS])
    theirs = authors_loss({k: (policy[k], ref[k], lengths[k]) for k in KEYS}, 0.2, 0.1, 0.66, pref_ftx)
    their_grads = torch.autograd.grad(theirs, [policy[k] for k in KEYS])
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    for a, b in zip(ours_grads, their_grads):  # W is attached in their code too: its gradient counts
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_our_default_placement_differs_by_exactly_the_steered_sft_outside_w():
    """With SFT on, the paper's form (SFT inside W*g) and the authors' (outside W) differ by
    (1 - W) * g * ftx * (sft+ + sft-), per example."""
    _, authors = authors_objective("loss.gamma=0.3")
    _, paper = authors_objective("loss.gamma=0.3", "loss.sft_in_weight=true")
    policy, ref, lengths = random_batch(3, size=1)
    seqs = {k: SeqLogps(policy[k].detach(), ref[k], lengths[k]) for k in KEYS}
    a = lambda key: seqs[key].policy / seqs[key].length
    weight = torch.sigmoid(-(0.66 * a("x|y+") + 0.34 * a("x|y-")))
    expected = (1 - weight) * 0.1 * 0.3 * (-a("x+|y+") - a("x-|yo"))
    torch.testing.assert_close(authors(seqs)["loss"] - paper(seqs)["loss"], expected.mean(), rtol=1e-9, atol=1e-12)


def test_sso_authors_carries_their_training_recipe():
    cfg, _ = authors_objective()
    assert list(cfg.optimizer.betas) == [0.9, 0.95] and cfg.optimizer.weight_decay == 0.1
    assert cfg.scheduler.shape == "cosine" and cfg.scheduler.warmup_ratio == 0.1
    assert cfg.scheduler.across_iterations == "restart"  # each of their iterations is a fresh one-epoch run
    assert cfg.data.max_length == 2048 and cfg.data.reference == "iteration" and cfg.trainer.max_epochs >= 1
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        paper = compose(config_name="config", overrides=["model=llama3_8b"])
    assert (paper.trainer.precision, paper.trainer.strategy, paper.model.dtype) == (
        "bf16-mixed",
        "deepspeed_stage_2",
        "float32",
    )
    assert paper.scheduler.shape == "cosine" and list(paper.optimizer.betas) == [0.9, 0.95]


def test_sso_authors_runs_on_the_toy_world(cli, tmp_path):
    run_dir = tmp_path / "run"
    result = cli(
        *TINY, "variant=sso_authors", "data.prompts.num_train=32", "data.prompts.num_eval=8", f"hydra.run.dir={run_dir}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = pd.read_csv(run_dir / "metrics.csv")
    rates = metrics["train/lr"].dropna().tolist()
    assert rates[0] == 0.0 and max(rates) == pytest.approx(1e-5)  # 10% warmup from 0, then cosine
    assert metrics["train/loss"].notna().any()
