"""Scheme two_stage: the data generator and the policy train separately. Each phase changes
only its own weights: the generator's training never reaches the policy, which comes back
exactly as it was, with its optimizer state; the policy changes only in its own phase."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import TINY, run_in_process

from sso_lightning.schemes import two_stage

SIZE = ["data.prompts.num_train=16", "data.prompts.num_eval=8"]
RUN = [o for o in TINY if not o.startswith("model.")] + SIZE


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def optimizer_state(optimizer) -> list[torch.Tensor]:
    return [v.detach().clone() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]


def run_recorded(monkeypatch, tmp_path, model_dir, *overrides):
    """Run two iterations in this process, recording weights and optimizer state when the
    policy is set aside, when the generator is done, and after the policy is restored."""
    events = []
    set_aside, restore = two_stage.set_aside, two_stage.restore

    def spy_set_aside(model, optimizer):
        events.append(("set aside", snapshot(model), optimizer_state(optimizer)))
        return set_aside(model, optimizer)

    def spy_restore(model, optimizer, saved):
        events.append(("generator", snapshot(model), None))
        restore(model, optimizer, saved)
        events.append(("restored", snapshot(model), optimizer_state(optimizer)))

    monkeypatch.setattr(two_stage, "set_aside", spy_set_aside)
    monkeypatch.setattr(two_stage, "restore", spy_restore)
    run_in_process(
        tmp_path, model_dir, *SIZE, "variant=sso_two_stage", "optimizer.lr=1e-3", "data.batch_size=4", *overrides
    )
    return events


def changed(a: dict, b: dict) -> set[str]:
    return {n for n in a if not torch.equal(a[n], b[n])}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_generator_and_policy_each_change_only_in_their_own_phase(monkeypatch, tmp_path, model_dir, lora):
    overrides = ["model.lora.enabled=true", "model.lora.r=4"] if lora else []
    events = run_recorded(monkeypatch, tmp_path, model_dir, *overrides)
    assert [e[0] for e in events] == ["set aside", "generator", "restored"] * 2
    (_, p0, opt0), (_, g0, _), (_, r0, ropt0), (_, p1, opt1), (_, g1, _), (_, r1, ropt1) = events
    trainable = {n for n in p0 if "lora_" in n} if lora else set(p0)

    assert changed(p0, g0) == trainable  # the generator trained in its phase ...
    assert not changed(p0, r0)  # ... and none of that reached the policy
    assert not ropt0 and not opt0  # iteration 0: the policy's optimizer had no state yet
    assert changed(r0, p1) == trainable  # the policy trained in its own phase
    assert changed(p1, g1) == trainable and not changed(p1, r1)
    assert opt1 and len(ropt1) == len(opt1) and all(torch.equal(a, b) for a, b in zip(opt1, ropt1))
    final = tmp_path / "run" / "policy"
    assert (final / ("adapter_config.json" if lora else "config.json")).exists()


def test_two_stage_run_writes_both_snapshots_and_logs_per_iteration(cli, tmp_path, model_dir):
    run_dir = tmp_path / "run"
    result = cli(
        *RUN, "model=hf", f"model.name_or_path={model_dir}", "variant=sso_two_stage", f"hydra.run.dir={run_dir}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(p.name for p in (run_dir / "data").iterdir())
    assert names == ["epoch_0.jsonl", "epoch_0_generator.jsonl", "epoch_1.jsonl", "epoch_1_generator.jsonl"]
    generator_data = json.loads((run_dir / "data" / "epoch_0_generator.jsonl").read_text().splitlines()[0])
    policy_data = json.loads((run_dir / "data" / "epoch_0.jsonl").read_text().splitlines()[0])
    assert {"chosen", "rejected", "raw"} <= set(generator_data) and "raw" not in policy_data
    assert set(policy_data["ref_logps"]) == {"x|y+", "x|y-"}
    table = pd.read_csv(run_dir / "epochs.csv", index_col="epoch")
    assert list(table.index) == [0, 1, 2]  # iterations, not Lightning's two epochs per iteration
    metrics = pd.read_csv(run_dir / "metrics.csv")
    for speed, phase in (("perf/generator_tokens_per_s", "generator/loss"), ("perf/train_tokens_per_s", "train/loss")):
        phase_ends = metrics.loc[metrics[phase].notna()].groupby("epoch")["step"].max() + 1
        assert metrics.loc[metrics[speed].notna(), "step"].tolist() == phase_ends.tolist(), speed  # its own phase's end
    for column in (
        "generator/loss",
        "generator/loss_plus",
        "generator/loss_minus",
        "train/loss",
        "train/acc_policy",
        "steering/pair_accuracy",
        "data/pair_accuracy",
        "data/onpolicy_prob_rejected",
    ):
        assert table[column].iloc[:2].notna().all(), column
    assert "train/loss_plus" not in table and "train/W" not in table
    assert table["eval/quality"].notna().all()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["scheme=two_stage", "variant=pbaa"], "scheme=two_stage trains the data generator"),
        (["variant=sso_two_stage", "data.regenerate=false"], "data.regenerate=false need scheme=combined"),
        (["scheme=three_stage"], "scheme=three_stage: no such config (valid: combined, two_stage)"),
    ],
)
def test_incompatible_scheme_options_fail_in_one_line(cli, tmp_path, overrides, message):
    result = cli(*RUN, *overrides, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and message in result.stderr
    assert not (tmp_path / "run" / "policy").exists()
