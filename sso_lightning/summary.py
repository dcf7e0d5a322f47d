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


NAN = "nan"  # a cell of the table where a NaN was logged: never averaged away, printed and saved as such


def read_metrics(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The numeric columns of a metrics.csv (or epochs.csv) and where a value was written: an
    empty cell is a metric not logged on that row; ``nan`` (or ``inf``) is a value that was logged."""
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    logged = raw.apply(lambda column: column.str.strip() != "")
    values = {}
    for name in raw.columns:
        try:
            values[name] = raw[name].where(logged[name]).astype(float)  # float("nan") is NaN
        except (ValueError, TypeError):  # not a metric
            continue
    return pd.DataFrame(values, index=raw.index), logged[list(values)]


def with_nan(table: pd.DataFrame, nan_logged: pd.DataFrame) -> pd.DataFrame:
    """``table`` with ``"nan"`` in the cells where ``nan_logged`` is true."""
    for name in nan_logged.columns[nan_logged.any()]:
        table[name] = table[name].astype(object).mask(nan_logged[name], NAN)
    return table


def epoch_table(metrics_csv: Path) -> pd.DataFrame:
    """One row per epoch: the mean of every metric logged in that epoch (train/* are
    per-step values, data/*, eval/* and perf/* one value each). A metric that logged a NaN
    in an epoch holds ``"nan"`` there, not the mean of its other values; one not logged in
    an epoch is NaN (``-`` in the printed table, empty in epochs.csv)."""
    values, logged = read_metrics(metrics_csv)
    in_epoch = values["epoch"].notna()  # the learning-rate monitor's rows carry no epoch
    values, logged = values[in_epoch], logged[in_epoch]
    metrics = values.drop(columns=["epoch", "step"], errors="ignore")
    epochs = values["epoch"].astype(int)
    nan_logged = (logged[metrics.columns] & metrics.isna()).groupby(epochs).any()
    return with_nan(metrics.groupby(epochs).mean(), nan_logged)


def read_epoch_table(epochs_csv: Path) -> pd.DataFrame:
    """An epochs.csv as ``epoch_table`` wrote it, ``"nan"`` cells included."""
    values, logged = read_metrics(epochs_csv)
    epochs = pd.Index(values.pop("epoch").astype(int), name="epoch")
    table = values.set_axis(epochs)
    return with_nan(table, (logged[table.columns] & table.isna()).set_axis(epochs))


def nan_cells(table: pd.DataFrame) -> list[tuple[str, int]]:
    """(metric, epoch) of every cell where a NaN was logged, metric by metric."""
    return [
        (str(name), int(epoch))
        for name in table.columns
        for epoch, v in table[name].items()
        if isinstance(v, str) and v == NAN
    ]


def format_table(table: pd.DataFrame) -> str:
    shown = table[[c for c in TABLE_COLUMNS if c in table.columns]]
    return shown.to_string(float_format=lambda v: f"{v:.3f}", na_rep="-")
