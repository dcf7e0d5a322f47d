"""`python -m sso_lightning.report` on synthetic multirun directories with the real layout:
labels, mean ± std over seeds, the verdict's three cases, the files written, missing jobs
named, and the one-line errors."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pandas as pd
import pytest
from conftest import ROOT
from omegaconf import OmegaConf

from sso_lightning import report
from sso_lightning.summary import epoch_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OUTPUTS = ("report.md", "verdict.txt", "quality.png", "pairs.png")


def write_job(sweep, number, overrides, quality, accuracy, rejected, variant=None, finished=True, failed=None):
    """One job directory as `python -m sso_lightning -m` leaves it. `quality` has one value per
    epoch plus the final policy's; `accuracy` and `rejected` one per epoch (iteration)."""
    job = sweep / str(number)
    (job / ".hydra").mkdir(parents=True)
    config = {
        "seed": 0,
        "variant": variant,
        "logger": {"wandb": {"project": "proj", "save_dir": "${hydra:runtime.output_dir}"}},
        "model": {"cache_dir": "${oc.env:SSO_LIGHTNING_CACHE,'~/.cache'}"},
    }
    OmegaConf.save(OmegaConf.create(config), job / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(overrides)), job / ".hydra" / "overrides.yaml")
    rows, step = [], 0
    for epoch, (acc, rej) in enumerate(zip(accuracy, rejected)):
        rows.append(
            {
                "epoch": epoch,
                "step": step,
                "data/pair_accuracy": acc,
                "data/onpolicy_prob_rejected": rej,
                "data/onpolicy_prob_chosen": 0.5 + epoch / 100,
            }
        )
        rows.append({"epoch": epoch, "step": step, "eval/quality": quality[epoch]})
        for _ in range(3):
            rows.append({"epoch": epoch, "step": step, "train/loss": 0.8 - step / 100, "train/acc_policy": 0.9})
            step += 1
    rows.append({"epoch": len(accuracy), "step": step, "eval/quality": quality[-1]})
    pd.DataFrame(rows).to_csv(job / "metrics.csv", index=False)
    if finished:
        epoch_table(job / "metrics.csv").to_csv(job / "epochs.csv")
    if failed:
        (job / "FAILED").write_text(failed + "\n")


def sweep_dir(tmp_path, jobs, task=("loss=sso,pbaa", "seed=1,2")):
    """A multirun directory; each job is (overrides, final quality, final accuracy, final
    on-policy prob of y-, extra keyword arguments of write_job)."""
    sweep = tmp_path / "multirun" / "2026-01-01" / "12-00-00"
    sweep.mkdir(parents=True)
    OmegaConf.save(
        OmegaConf.create({"hydra": {"overrides": {"hydra": ["hydra.mode=MULTIRUN"], "task": list(task)}}}),
        sweep / "multirun.yaml",
    )
    for number, (overrides, quality, accuracy, rejected, extra) in enumerate(jobs):
        write_job(sweep, number, overrides, [0.6, 0.65, quality], [0.9, accuracy], [0.07, rejected], **extra)
    return sweep


def make_stats(tmp_path, jobs):
    found = report.collect_jobs(sweep_dir(tmp_path, jobs))
    return report.summary_table(report.run_table(found, report.labels(found)))


def test_labels_are_variant_plus_varying_overrides_without_seed(tmp_path):
    sweep = sweep_dir(
        tmp_path,
        [
            (["loss=pbaa", "seed=1", "logger=csv", "variant=PBAA"], 0.7, 0.9, 0.1, {"variant": "PBAA"}),
            (["loss=pbaa", "seed=2", "logger=csv", "variant=PBAA"], 0.7, 0.9, 0.1, {"variant": "PBAA"}),
            (["loss=sso", "loss.gamma=0.05", "seed=1", "logger=csv"], 0.7, 0.9, 0.1, {"variant": "SSO"}),
            (["loss=sso", "loss.gamma=0.1", "seed=1", "logger=csv"], 0.7, 0.9, 0.1, {}),
        ],
    )
    assert report.labels(report.collect_jobs(sweep)) == {
        0: "PBAA (loss=pbaa)",
        1: "PBAA (loss=pbaa)",
        2: "SSO (loss=sso loss.gamma=0.05)",
        3: "loss=sso loss.gamma=0.1",
    }


def test_labels_without_anything_varying(tmp_path):
    plain = sweep_dir(tmp_path / "a", [(["seed=1"], 0.7, 0.9, 0.1, {}), (["seed=2"], 0.7, 0.9, 0.1, {})])
    named = sweep_dir(tmp_path / "b", [(["seed=1"], 0.7, 0.9, 0.1, {"variant": "SSO w/o W"})])
    assert set(report.labels(report.collect_jobs(plain)).values()) == {"default"}
    assert report.labels(report.collect_jobs(named)) == {0: "SSO w/o W"}


def test_mean_and_std_over_seeds_match_hand_computation(tmp_path):
    stats = make_stats(
        tmp_path,
        [
            (["loss=sso", "seed=1"], 0.70, 0.90, 0.10, {}),
            (["loss=pbaa", "seed=1"], 0.60, 0.80, 0.20, {}),
            (["loss=sso", "seed=2"], 0.74, 0.94, 0.16, {}),
        ],
    )
    assert list(stats.index) == ["loss=sso", "loss=pbaa"]  # order of first appearance
    sso, pbaa = stats.loc["loss=sso"], stats.loc["loss=pbaa"]
    assert sso[("n seeds", "")] == 2 and pbaa[("n seeds", "")] == 1
    assert sso[("eval/quality", "mean")] == pytest.approx(0.72)
    assert sso[("eval/quality", "std")] == pytest.approx(math.sqrt(2 * 0.02**2))  # ddof=1
    # data/* are final at the last iteration (epoch 1), one row before the final eval/quality
    assert sso[("data/pair_accuracy", "mean")] == pytest.approx(0.92)
    assert sso[("data/onpolicy_prob_rejected", "std")] == pytest.approx(math.sqrt(2 * 0.03**2))
    assert sso[("data/onpolicy_prob_chosen", "mean")] == pytest.approx(0.51)
    assert sso[("eval/quality (epoch 0)", "mean")] == pytest.approx(0.6)
    assert math.isnan(pbaa[("eval/quality", "std")])
    table = report.main_table(stats)
    assert "| loss=sso | 2 | 0.720 ± 0.028 |" in table
    assert "| loss=pbaa | 1 | 0.600 ± – |" in table


def test_verdict_within_noise_beyond_noise_and_one_seed(tmp_path):
    stats = make_stats(
        tmp_path,
        [
            (["loss=pbaa", "seed=1"], 0.70, 0.90, 0.10, {"variant": "PBAA"}),
            (["loss=pbaa", "seed=2"], 0.74, 0.92, 0.12, {"variant": "PBAA"}),
            (["loss=sso", "seed=1"], 0.71, 0.99, 0.30, {"variant": "SSO"}),
            (["loss=sso", "seed=2"], 0.73, 0.98, 0.31, {"variant": "SSO"}),
            (["loss=ipo", "seed=1"], 0.50, 0.90, 0.10, {"variant": "IPO"}),
        ],
    )
    text = report.verdict(stats)
    assert text.splitlines()[0] == "Baseline: PBAA (loss=pbaa)."  # the first variant: none is labelled exactly PBAA
    lines = {
        line.split(": final ")[0] + " " + line.split(": final ")[1].split(" is ")[0]: line
        for line in text.splitlines()
        if ": final " in line
    }
    assert "within seed noise of PBAA" in lines["SSO (loss=sso) eval/quality"]
    assert (
        "higher than PBAA (loss=pbaa) by 0.075 (beyond 2 standard errors" in lines["SSO (loss=sso) data/pair_accuracy"]
    )
    assert "higher than" in lines["SSO (loss=sso) data/onpolicy_prob_rejected"]
    assert "lower than PBAA (loss=pbaa) by 0.220 (one seed: no noise estimate)" in lines["IPO (loss=ipo) eval/quality"]
    assert text.splitlines()[-1].startswith(
        "Highest final eval/quality: PBAA (loss=pbaa) (0.720), within seed noise of runner-up SSO"
    )


def test_baseline_is_the_variant_called_pbaa(tmp_path):
    stats = make_stats(
        tmp_path,
        [
            (["seed=1"], 0.70, 0.90, 0.10, {"variant": "SSO"}),
            (["seed=1"], 0.60, 0.90, 0.10, {"variant": "PBAA"}),
        ],
    )
    text = report.verdict(stats)
    assert text.splitlines()[0] == "Baseline: PBAA."
    assert "SSO: final eval/quality is higher than PBAA by 0.100 (one seed: no noise estimate)." in text


def test_baselines_pbaa_under_the_same_overrides_or_against_a_given_value(tmp_path):
    jobs = []
    for variant, quality in (("PBAA", 0.6), ("SSO", 0.7)):
        for errors in ("subtle", "blatant"):
            for seed in (1, 2):
                jobs.append(
                    (
                        [f"variant={variant.lower()}", f"model.teacher.bad_errors={errors}", f"seed={seed}"],
                        quality,
                        0.9,
                        0.1,
                        {"variant": variant},
                    )
                )
    found = report.collect_jobs(sweep_dir(tmp_path, jobs))
    assert report.baselines(found) == {
        f"{v} (model.teacher.bad_errors={e})": f"PBAA (model.teacher.bad_errors={e})"
        for v in ("PBAA", "SSO")
        for e in ("subtle", "blatant")
    }
    against = report.baselines(found, "model.teacher.bad_errors=blatant")
    assert against["SSO (model.teacher.bad_errors=subtle)"] == "SSO (model.teacher.bad_errors=blatant)"
    assert against["PBAA (model.teacher.bad_errors=blatant)"] == "PBAA (model.teacher.bad_errors=blatant)"
    with pytest.raises(report.ReportError, match="--against loss.gamma=0: loss.gamma does not vary across the sweep"):
        report.baselines(found, "loss.gamma=0")


def test_report_files_and_missing_jobs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep = sweep_dir(
        tmp_path,
        [
            (["loss=sso", "seed=1"], 0.70, 0.90, 0.10, {}),
            (["loss=pbaa", "seed=1"], 0.60, 0.80, 0.20, {}),
            (["loss=sso", "seed=2"], 0.74, 0.94, 0.16, {}),
            (
                ["loss=pbaa", "seed=2"],
                0.0,
                0.0,
                0.0,
                {"finished": False, "failed": "ValueError: loss.g=0 would multiply"},
            ),
            (["loss=sso", "seed=3"], 0.0, 0.0, 0.0, {"finished": False}),
        ],
    )
    assert report.main([str(sweep)]) == 0
    text = (sweep / "report.md").read_text()
    assert "`python -m sso_lightning -m loss=sso,pbaa seed=1,2`" in text
    assert "Finished jobs: 3 of 5." in text
    assert "| variant | n seeds | eval/quality | data/pair_accuracy |" in text
    assert "| loss=sso | 2 | 0.720 ± 0.028 |" in text
    assert "| loss=sso | 1 | 0.650 | 0.130 | 0.920 |" in text  # per iteration: quality, on-policy prob y-, accuracy
    missing = text.split("## Missing jobs")[1]
    assert "job `3/` (loss=pbaa seed=2): ValueError: loss.g=0 would multiply" in missing
    assert "job `4/` (loss=sso seed=3): unfinished" in missing
    assert "![quality](quality.png)" in text and "![pairs](pairs.png)" in text
    verdict = (sweep / "verdict.txt").read_text()
    assert verdict.startswith("Baseline: loss=sso.") and verdict.strip() in text
    for name in ("quality.png", "pairs.png"):
        assert (sweep / name).read_bytes().startswith(PNG_MAGIC)
    out = capsys.readouterr().out
    assert "| loss=pbaa | 1 |" in out and "Baseline: loss=sso." in out and str(sweep / "report.md") in out
    assert "W&B" not in out  # offline: no W&B report
    assert not list(sweep.glob(".*.tmp"))
    assert report.main([str(sweep)]) == 0  # a second run replaces its own outputs


def run_cli(*args):
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, "-m", "sso_lightning.report", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_error(result, *words):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert all(word in lines[0] for word in words), lines[0]


def test_errors_are_one_line_exit_2_and_write_nothing(tmp_path):
    assert_error(run_cli(str(tmp_path / "nope")), "does not exist")
    assert_error(run_cli(str(tmp_path / "nope" / "x")), "not a directory")
    (tmp_path / "file").write_text("")
    assert_error(run_cli(str(tmp_path / "file")), "not a directory")
    empty = tmp_path / "empty"
    (empty / "0.hydra").mkdir(parents=True)
    assert_error(run_cli(str(empty)), "no job subdirectories", "python -m sso_lightning -m")
    sweep = sweep_dir(
        tmp_path,
        [
            (["seed=1"], 0.0, 0.0, 0.0, {"finished": False, "failed": "RuntimeError: boom"}),
            (["seed=2"], 0.0, 0.0, 0.0, {"finished": False}),
        ],
    )
    assert_error(run_cli(str(sweep)), "no job", "1 failed", "1 unfinished")
    for directory in (empty, sweep):
        assert not any((directory / name).exists() for name in OUTPUTS)


def test_verdict_one_seed_difference_below_the_precision_shown_is_equal(tmp_path):
    stats = make_stats(
        tmp_path,
        [
            (["loss=sso", "seed=1"], 0.70, 0.90, 0.10, {}),
            (["loss=pbaa", "seed=1"], 0.70, 0.90 - 1e-10, 0.10 + 1e-10, {}),
        ],
    )
    text = report.verdict(stats)
    assert "loss=pbaa: final data/pair_accuracy is equal to loss=sso at the precision shown (one seed" in text
    assert "loss=pbaa: final data/onpolicy_prob_rejected is equal to loss=sso at the precision shown" in text
    assert " by " not in text


def test_verdict_states_a_clear_difference_signed_at_three_decimals(tmp_path):
    stats = make_stats(
        tmp_path,
        [
            (["loss=sso", "seed=1"], 0.70, 0.90, 0.10, {}),
            (["loss=pbaa", "seed=1"], 0.71234, 0.87766, 0.10, {}),
        ],
    )
    text = report.verdict(stats)
    assert "loss=pbaa: final eval/quality is higher than loss=sso by 0.012 (one seed: no noise estimate)." in text
    assert "loss=pbaa: final data/pair_accuracy is lower than loss=sso by 0.022 (one seed: no noise estimate)." in text


def test_plots_have_no_offset_text_and_readable_ticks_when_values_differ_by_1e_10(tmp_path):
    sweep = sweep_dir(tmp_path, [])
    for number, (overrides, delta) in enumerate(((["loss=sso", "seed=1"], 0.0), (["loss=pbaa", "seed=1"], 1e-10))):
        write_job(sweep, number, overrides, [0.6 + delta, 0.6], [0.9 + delta], [0.076130657 + delta])
    jobs = report.collect_jobs(sweep)
    rows = report.epoch_rows(jobs, report.labels(jobs))
    figures = report.figures(report.epoch_means(rows), report.epoch_spread(rows))
    assert set(figures) == {"quality.png", "pairs.png"}
    for name, figure in figures.items():
        figure.canvas.draw()
        (ax,) = figure.axes
        for axis in (ax.xaxis, ax.yaxis):
            assert axis.get_offset_text().get_text() == "", (name, axis.axis_name)
            ticks = [label.get_text() for label in axis.get_ticklabels() if label.get_text()]
            assert len(set(ticks)) == len(ticks) and all(len(tick) <= 6 for tick in ticks), (name, ticks)


def test_report_names_no_absolute_path(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep = sweep_dir(
        tmp_path, [(["loss=sso", "seed=1"], 0.70, 0.90, 0.10, {}), (["loss=pbaa", "seed=1"], 0, 0, 0, {})]
    )
    (sweep / "1" / "epochs.csv").unlink()
    (sweep / "1" / "FAILED").write_text(f"FileNotFoundError: {sweep / '1' / 'checkpoints' / 'last.ckpt'}\n")
    assert report.main([str(sweep)]) == 0
    text, verdict = (sweep / "report.md").read_text(), (sweep / "verdict.txt").read_text()
    for absolute in {str(sweep), str(sweep.resolve()), str(tmp_path)}:
        assert absolute not in text and absolute not in verdict
    assert "# SSO ablation report: 2026-01-01/12-00-00" in text
    assert "job `1/` (loss=pbaa seed=1): FileNotFoundError: ./1/checkpoints/last.ckpt" in text


METRICS_WITH_A_NAN = """epoch,step,train/loss,data/kept_fraction,eval/quality
0,0,,0.9,
0,,,,0.6
0,0,0.8,,
0,1,nan,,
0,2,0.6,,
1,3,0.5,,
1,3,,0.8,
1,4,0.7,,
,4,9.0,,
1,,,,0.65
2,,,,nan
"""


def test_the_epoch_table_shows_a_logged_nan_instead_of_averaging_over_it(tmp_path):
    """An empty cell is a metric not logged on that row; `nan` is a logged value: its epoch's
    mean is nan, in the table, the printed table and epochs.csv, not the mean of the rest. A row
    without an epoch (as the learning-rate monitor logs) counts in none."""
    from sso_lightning.summary import format_table, nan_cells, read_epoch_table

    (tmp_path / "metrics.csv").write_text(METRICS_WITH_A_NAN)
    table = epoch_table(tmp_path / "metrics.csv")
    assert table.loc[0, "train/loss"] == "nan" and table.loc[1, "train/loss"] == pytest.approx(0.6)
    assert table.loc[2, "eval/quality"] == "nan" and table.loc[1, "eval/quality"] == pytest.approx(0.65)
    assert table["data/kept_fraction"].tolist()[:2] == [0.9, 0.8] and math.isnan(table.loc[2, "data/kept_fraction"])
    assert math.isnan(table.loc[2, "train/loss"])  # not logged in epoch 2: no value, not nan
    assert nan_cells(table) == [("train/loss", 0), ("eval/quality", 2)]
    printed = format_table(table).splitlines()
    assert printed[2].split() == ["0", "0.600", "0.900", "nan"]  # eval/quality, kept_fraction, train/loss
    assert printed[4].split() == ["2", "nan", "-", "-"]
    table.to_csv(tmp_path / "epochs.csv")
    assert (tmp_path / "epochs.csv").read_text().splitlines()[1:] == ["0,nan,0.9,0.6", "1,0.6,0.8,0.65", "2,,,nan"]
    assert nan_cells(read_epoch_table(tmp_path / "epochs.csv")) == nan_cells(table)


def test_a_job_with_a_nan_metric_is_left_out_of_the_means_and_named(tmp_path):
    sweep = sweep_dir(
        tmp_path,
        [
            (["loss=sso", "seed=1"], 0.70, 0.90, 0.10, {}),
            (["loss=sso", "seed=2"], 0.74, 0.94, 0.16, {}),
            (["loss=pbaa", "seed=1"], 0.60, 0.80, 0.20, {}),
        ],
    )
    epochs = sweep / "1" / "epochs.csv"
    lines = epochs.read_text().splitlines()
    header = lines[0].split(",")
    row = lines[-1].split(",")  # the final policy's row: eval/quality alone
    row[header.index("eval/quality")] = "nan"
    epochs.write_text("\n".join([*lines[:-1], ",".join(row)]) + "\n")
    jobs = report.collect_jobs(sweep)
    assert jobs[1].epochs is None and jobs[1].problem == "eval/quality is NaN in epoch 2 (left out of the tables)"
    stats = report.summary_table(report.run_table(jobs, report.labels(jobs)))
    assert stats.loc["loss=sso", ("eval/quality", "mean")] == pytest.approx(0.70)  # seed 1 alone, not a skipped NaN
    assert stats.loc["loss=sso", ("n seeds", "")] == 1
    assert report.main([str(sweep)]) == 0
    assert (
        "job `1/` (loss=sso seed=2): eval/quality is NaN in epoch 2 (left out of the tables)"
        in (sweep / "report.md").read_text().split("## Missing jobs")[1]
    )
