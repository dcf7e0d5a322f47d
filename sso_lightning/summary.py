"""The per-epoch table printed at the end of a run, computed from the run's own metrics.csv."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

TABLE_COLUMNS = (
    "eval/quality",
    "data/pair_accuracy",
    "data/onpolicy_prob_chosen",
    "data/onpolicy_prob_rejected",
    "data/kept_fraction",
    "train/loss",
    "train/acc_policy",
    "perf/train_tokens_per_s",
)


def epoch_table(metrics_csv: Path) -> pd.DataFrame:
    """One row per epoch: the mean of every metric logged in that epoch (train/* are
    per-step values, data/*, eval/* and perf/* one value each)."""
    frame = pd.read_csv(metrics_csv)
    table = frame.drop(columns=["step"], errors="ignore").groupby("epoch").mean(numeric_only=True)
    table.index = table.index.astype(int)
    return table


def format_table(table: pd.DataFrame) -> str:
    shown = table[[c for c in TABLE_COLUMNS if c in table.columns]]
    return shown.to_string(float_format=lambda v: f"{v:.3f}", na_rep="-")
