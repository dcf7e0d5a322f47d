"""Whole runs through the command line, as the README tells users to start them."""

from __future__ import annotations

import json

import pandas as pd
import torch
from transformers import AutoModelForCausalLM

from conftest import TINY


def test_default_config_runs_and_reports(cli, tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    result = cli(*TINY, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]

    # the printed table: one row per epoch 0..2, the last holds only the final quality
    assert f"run directory: {run_dir}" in result.stdout
    table = pd.read_csv(run_dir / "epochs.csv", index_col="epoch")
    assert list(table.index) == [0, 1, 2]
    for column in ("eval/quality", "data/pair_accuracy", "data/onpolicy_prob_chosen", "data/onpolicy_prob_rejected",
                   "data/kept_fraction", "train/loss", "perf/train_tokens_per_s"):
        assert column in result.stdout
    assert table["eval/quality"].notna().all()
    assert table.loc[[0, 1], "data/pair_accuracy"].between(0, 1).all()
    assert table.loc[[0, 1], "train/loss"].map(lambda v: v == v and abs(v) < 1e6).all()
    assert pd.isna(table.loc[2, "train/loss"])

    # one snapshot per epoch, each record complete, reference log-probs for what the loss reads
    for epoch in (0, 1):
        records = [json.loads(line) for line in (run_dir / "data" / f"epoch_{epoch}.jsonl").read_text().splitlines()]
        assert records
        for r in records:
            assert {"instruction", "system", "p_system", "n_system", "chosen", "rejected", "raw"} <= set(r)
            assert {"x|y+", "x|y-", "x+|y+", "x+|y-", "x-|yo", "x-|y+"} <= set(r["ref_logps"])
            assert set(r["scores"]) == {"chosen", "rejected", "raw"}
        kept = table.loc[epoch, "data/kept_fraction"]
        assert len(records) == round(kept * 48)
    assert not list((run_dir / "data").glob("*.tmp"))

    # the exported policy loads and differs from the bootstrap it started from
    trained = AutoModelForCausalLM.from_pretrained(run_dir / "policy")
    start = AutoModelForCausalLM.from_pretrained(next((cache_dir / "toy").iterdir()))
    changed = [not torch.equal(a, b) for a, b in zip(trained.parameters(), start.parameters())]
    assert all(changed)


def test_offline_training_from_a_snapshot_and_from_the_authors_format(cli, tmp_path):
    first = tmp_path / "first"
    assert cli(*TINY, "trainer.max_epochs=1", f"hydra.run.dir={first}").returncode == 0
    snapshot = first / "data" / "epoch_0.jsonl"

    offline = tmp_path / "offline"
    result = cli(*TINY, f"data.offline={snapshot}", f"hydra.run.dir={offline}")
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(offline / "epochs.csv", index_col="epoch")
    assert table.loc[[0, 1], "train/loss"].notna().all()
    # offline: the file is read once, so only the first epoch has data metrics and a snapshot
    assert (offline / "data" / "epoch_0.jsonl").exists() and not (offline / "data" / "epoch_1.jsonl").exists()
    ours = [json.loads(line) for line in snapshot.read_text().splitlines()]
    trained_on = [json.loads(line) for line in (offline / "data" / "epoch_0.jsonl").read_text().splitlines()]
    assert [r["token_ids"] for r in trained_on] == [r["token_ids"] for r in ours]

    authors = tmp_path / "authors.jsonl"
    authors.write_text("".join(
        json.dumps({k: r[k] for k in ("instruction", "p_system", "n_system", "system", "chosen", "rejected", "raw")}) + "\n"
        for r in ours
    ))
    result = cli(*TINY, "trainer.max_epochs=1", f"data.offline={authors}", f"hydra.run.dir={tmp_path / 'authors'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert pd.read_csv(tmp_path / "authors" / "epochs.csv", index_col="epoch").loc[0, "train/loss"] > 0


def test_multirun_gives_one_directory_per_job(cli, tmp_path):
    sweep = tmp_path / "sweep"
    result = cli("-m", "loss=sso,pbaa", "seed=1,2", *TINY, "trainer.max_epochs=1", "data.prompts.num_train=24",
                 f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / ".hydra").is_dir())
    assert len(jobs) == 4
    configs = {(p / ".hydra" / "overrides.yaml").read_text() for p in jobs}
    assert len(configs) == 4
    for job in jobs:
        assert (job / "metrics.csv").exists() and (job / "data" / "epoch_0.jsonl").exists()
