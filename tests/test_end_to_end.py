"""Whole runs through the command line, as the README tells users to start them."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch
from conftest import ROOT, TINY
from transformers import AutoModelForCausalLM


def test_default_config_runs_and_reports(cli, tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    result = cli(*TINY, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]

    # the printed table: one row per epoch 0..2, the last holds only the final quality
    assert f"run directory: {run_dir}" in result.stdout
    table = pd.read_csv(run_dir / "epochs.csv", index_col="epoch")
    assert list(table.index) == [0, 1, 2]
    for column in (
        "eval/quality",
        "data/pair_accuracy",
        "data/onpolicy_prob_chosen",
        "data/onpolicy_prob_rejected",
        "data/kept_fraction",
        "train/loss",
        "perf/train_tokens_per_s",
    ):
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
    assert not list((run_dir / "data").glob(".*tmp*"))

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
    authors.write_text(
        "".join(
            json.dumps(
                {k: r[k] for k in ("instruction", "p_system", "n_system", "system", "chosen", "rejected", "raw")}
            )
            + "\n"
            for r in ours
        )
    )
    result = cli(*TINY, "trainer.max_epochs=1", f"data.offline={authors}", f"hydra.run.dir={tmp_path / 'authors'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert pd.read_csv(tmp_path / "authors" / "epochs.csv", index_col="epoch").loc[0, "train/loss"] > 0


def test_multirun_survives_a_failing_job_and_the_report_reads_it(cli, tmp_path):
    """4 jobs, one of them invalid (PBAA has nothing for a two-stage generator to learn): the
    sweep runs the others, exits 1 naming the failed job, and the report covers the rest."""
    sweep = tmp_path / "sweep"
    result = cli(
        "-m",
        "variant=pbaa,sso",
        "scheme=combined,two_stage",
        *TINY,
        "trainer.max_epochs=1",
        "data.prompts.num_train=16",
        "data.prompts.num_eval=8",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == f"error: 1 job(s) of the sweep failed: {sweep / '1'}"
    assert "scheme=two_stage trains the data generator" in (sweep / "1" / "FAILED").read_text()
    for job in (0, 2, 3):
        assert (sweep / str(job) / "epochs.csv").exists() and (sweep / str(job) / "policy").is_dir()

    report = subprocess.run([sys.executable, "-m", "sso_lightning.report", str(sweep)], capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    text = (sweep / "report.md").read_text()
    for label in ("PBAA (scheme=combined)", "SSO (scheme=combined)", "SSO (scheme=two_stage)"):
        assert f"| {label} | 1 |" in text
    assert "- job `1/` (variant=pbaa scheme=two_stage" in text and "scheme=two_stage trains the data generator" in text
    for png in ("quality.png", "pairs.png"):
        assert (sweep / png).read_bytes().startswith(b"\x89PNG")
    verdict = (sweep / "verdict.txt").read_text()
    assert "SSO (scheme=combined): final eval/quality is" in verdict and "one seed: no noise estimate" in verdict


def test_offline_variant_trains_every_epoch_on_the_initial_policys_pairs(cli, tmp_path):
    run_dir = tmp_path / "run"
    result = cli(*TINY, "variant=sso_offline", "data.prompts.num_train=16", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (run_dir / "data").iterdir()) == ["epoch_0.jsonl"]
    table = pd.read_csv(run_dir / "epochs.csv", index_col="epoch")
    assert table["train/loss"].iloc[:2].notna().all() and table["eval/quality"].notna().all()
    assert table["data/pair_accuracy"].notna().tolist() == [True, False, False]


def test_wandb_logger_runs_offline_and_fixed_reference_is_the_initial_model(cli, tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    result = cli(
        *[o for o in TINY if o != "logger=csv"],
        "logger=wandb",
        "data.reference=initial",
        "data.prompts.num_train=16",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((run_dir / "wandb").glob("offline-run-*"))

    # epoch 1's data was generated by the updated policy, but its reference is the starting model
    from transformers import AutoTokenizer

    from sso_lightning.data.snapshot import read_snapshot
    from sso_lightning.scoring import score_sequences

    start_dir = next((cache_dir / "toy").iterdir())
    start = AutoModelForCausalLM.from_pretrained(start_dir)
    tokenizer = AutoTokenizer.from_pretrained(start_dir)
    examples = read_snapshot(run_dir / "data" / "epoch_1.jsonl", tokenizer, ["x|y+", "x-|yo"])
    expected = score_sequences(start, examples, ["x|y+", "x-|yo"], tokenizer.pad_token_id, batch_size=8)
    for key in ("x|y+", "x-|yo"):
        stored = torch.tensor([ex.ref_logps[key] for ex in examples])
        torch.testing.assert_close(stored, expected[key][0], atol=1e-4, rtol=1e-4)


def printed_table(stdout: str) -> list[list[str]]:
    """The table a run prints before its run directory: a header row, then one row per epoch."""
    lines = stdout[: stdout.index("\nrun directory: ")].rstrip().splitlines()
    start = max(i for i, line in enumerate(lines) if "eval/quality" in line)
    header, _, *rows = lines[start:]  # the second line holds the index name, "epoch"
    return [["epoch", *header.split()], *(row.split() for row in rows)]


def test_readme_default_command_prints_exactly_the_table_in_epochs_csv(cli, tmp_path):
    result = cli(cwd=tmp_path)  # python -m sso_lightning: what the README's ./sso run runs
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = Path(result.stdout.rsplit("run directory: ", 1)[1].strip())
    assert run_dir.parent.parent == tmp_path / "outputs"
    printed = printed_table(result.stdout)

    with (run_dir / "epochs.csv").open() as f:
        saved = list(csv.DictReader(f))
    header = printed[0]
    assert [row[0] for row in printed[1:]] == [row["epoch"] for row in saved]
    for shown, row in zip(printed[1:], saved):
        expected = ["-" if row[c] == "" else f"{float(row[c]):.3f}" for c in header[1:]]
        assert shown[1:] == expected, (shown[0], header)

    # the README shows the same table: the same columns and one row per epoch (its figures were measured)
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("```\n       eval/quality") + 4 :]
    example = printed_table(block[: block.index("```")].replace("outputs/<date>/<time>", ""))
    assert example[0] == header and [row[0] for row in example[1:]] == [row[0] for row in printed[1:]]
