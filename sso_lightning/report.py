"""`python -m sso_lightning.report <multirun dir>`: one ablation report for a Hydra sweep.

Reads every job of a multirun directory (`python -m sso_lightning -m ...`) and writes
into it report.md (tables, verdict, plots), verdict.txt, quality.png and pairs.png; with
W&B online, also a W&B Report over the sweep's group. Runs with the same label are the
seeds of one variant; numbers are means over seeds, with std (ddof=1) as the spread.
"""

from __future__ import annotations

import argparse
import io
import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from omegaconf import OmegaConf

from sso_lightning.atomic import write_atomic
from sso_lightning.loggers import sweep_group, wandb_online
from sso_lightning.summary import nan_cells, read_epoch_table

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

QUALITY, ACCURACY = "eval/quality", "data/pair_accuracy"
CHOSEN, REJECTED = "data/onpolicy_prob_chosen", "data/onpolicy_prob_rejected"
INITIAL = "eval/quality (epoch 0)"
FINAL_METRICS = (QUALITY, ACCURACY, CHOSEN, REJECTED)
EPOCH_METRICS = (QUALITY, REJECTED, ACCURACY)
VERDICT_METRICS = (QUALITY, ACCURACY, REJECTED)
NOT_LABELS = ("seed", "variant")  # a seed is a repeat, not a variant; variant is the label itself
DASH = "–"
DECIMALS = 3  # the tables' precision; the verdict and the plots' axes state numbers no finer


class ReportError(Exception):
    """A problem with the input directory; main() prints it as one `error:` line."""


@dataclass(frozen=True)
class Job:
    number: int
    overrides: tuple[str, ...]
    variant: str | None
    project: str | None
    epochs: (
        pd.DataFrame | None
    )  # the job's epochs.csv; None unless the job finished without a NaN in the report's metrics
    problem: str | None  # the FAILED line, "unfinished", or the NaN metric; None when finished


# (a) collecting runs


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def read_job(path: Path) -> Job:
    """One job directory. The config is read without resolving: interpolations such as
    ${hydra:...} only resolve inside the job's own Hydra context."""
    hydra = path / ".hydra"
    overrides = tuple(OmegaConf.load(hydra / "overrides.yaml")) if (hydra / "overrides.yaml").exists() else ()
    config = (
        OmegaConf.to_container(OmegaConf.load(hydra / "config.yaml"), resolve=False)
        if (hydra / "config.yaml").exists()
        else {}
    )
    variant = config.get("variant")
    wandb = (config.get("logger") or {}).get("wandb") or {}
    project = wandb.get("project") if isinstance(wandb, dict) else None
    failed = path / "FAILED"
    if failed.exists():
        lines = failed.read_text().strip().splitlines()
        problem = lines[0] if lines else "failed"
    elif not (path / "epochs.csv").exists():
        problem = "unfinished"
    else:
        problem = None
    epochs = read_epoch_table(path / "epochs.csv") if problem is None else None
    nan = [(m, e) for m, e in nan_cells(epochs) if m in (*FINAL_METRICS, *EPOCH_METRICS)] if epochs is not None else []
    if nan:  # a mean over seeds would skip it silently: the job is left out, and said why
        problem, epochs = f"{nan[0][0]} is NaN in epoch {nan[0][1]} (left out of the tables)", None
    return Job(
        int(path.name),
        tuple(map(str, overrides)),
        None if variant is None else str(variant),
        project if isinstance(project, str) else None,
        epochs,
        problem,
    )


def collect_jobs(sweep_dir: Path) -> list[Job]:
    """Every numbered job subdirectory, in job order; raises ReportError when there is
    nothing to report."""
    if not sweep_dir.is_dir():
        raise ReportError(f"{sweep_dir} does not exist or is not a directory")
    paths = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if not paths:
        raise ReportError(
            f"{sweep_dir} has no job subdirectories (0/, 1/, ...); expected a multirun directory "
            "from `python -m sso_lightning -m ...`"
        )
    jobs = [read_job(p) for p in paths]
    if all(job.problem for job in jobs):
        failed = sum(job.problem != "unfinished" for job in jobs)
        raise ReportError(f"no job in {sweep_dir} finished ({failed} failed, {len(jobs) - failed} unfinished)")
    return jobs


def sweep_command(sweep_dir: Path) -> str | None:
    """The command that reproduces the sweep, from multirun.yaml's task overrides."""
    path = sweep_dir / "multirun.yaml"
    if not path.exists():
        return None
    task = OmegaConf.to_container(OmegaConf.load(path), resolve=False).get("hydra", {}).get("overrides", {}).get("task")
    return None if task is None else "python -m sso_lightning -m " + shlex.join(map(str, task))


# (b) labels


def varying_overrides(jobs: list[Job]) -> dict[int, str]:
    """Job number -> its overrides whose key takes more than one value across the sweep
    (seed, variant and hydra.* excluded): what tells its variant apart besides the name."""
    keys = {_override_key(o) for job in jobs for o in job.overrides}
    keys = {k for k in keys if k not in NOT_LABELS and not k.startswith("hydra.")}

    def values(job: Job) -> dict[str, str]:
        return {_override_key(o): o for o in job.overrides}

    varying = {k for k in keys if len({values(job).get(k) for job in jobs}) > 1}
    return {job.number: " ".join(o for o in job.overrides if _override_key(o) in varying) for job in jobs}


def labels(jobs: list[Job]) -> dict[int, str]:
    """Job number -> label: the variant name plus the varying overrides, so that the seeds
    of one variant share it."""
    shown = varying_overrides(jobs)
    out = {}
    for job in jobs:
        if job.variant:
            out[job.number] = f"{job.variant} ({shown[job.number]})" if shown[job.number] else job.variant
        else:
            out[job.number] = shown[job.number] or "default"
    return out


def baselines(jobs: list[Job], against: str | None = None) -> dict[str, str]:
    """Label -> the label it is compared with. By default PBAA under the same other
    overrides (e.g. the same bad_errors setting) when the sweep ran it, else the sweep's
    first variant. ``against="key=value"`` compares each run with the same variant and
    overrides except ``key`` set to ``value`` (e.g. ``loss.aux.weight=0``: with and without)."""
    label_of, shown = labels(jobs), varying_overrides(jobs)
    finished = [job for job in jobs if job.problem is None]
    if against is not None:
        key = _override_key(against)
        if not any(_override_key(o) == key for job in jobs for o in shown[job.number].split()):
            raise ReportError(f"--against {against}: {key} does not vary across the sweep")

        def swap(text: str) -> str:
            return " ".join(against if _override_key(o) == key else o for o in text.split())

        found = {(job.variant, shown[job.number]): label_of[job.number] for job in finished}
        return {
            label_of[job.number]: found.get((job.variant, swap(shown[job.number])), label_of[job.number])
            for job in jobs
        }
    pbaa = {shown[job.number]: label_of[job.number] for job in finished if job.variant == "PBAA"}
    first = label_of[finished[0].number]
    return {label_of[job.number]: pbaa.get(shown[job.number], first) for job in jobs}


# (c) aggregation


def _final(column: pd.Series) -> float:
    """The last epoch where the metric was logged (data/* stop one row before eval/*)."""
    values = column.dropna()
    return float(values.iloc[-1]) if len(values) else math.nan


def run_table(jobs: list[Job], label_of: dict[int, str]) -> pd.DataFrame:
    """One row per finished job: its label and final (and initial) metrics."""
    rows = []
    for job in jobs:
        if job.epochs is None:
            continue
        row = {"label": label_of[job.number], "job": job.number}
        for metric in FINAL_METRICS:
            row[metric] = _final(job.epochs[metric]) if metric in job.epochs else math.nan
        row[INITIAL] = job.epochs[QUALITY].get(0, math.nan) if QUALITY in job.epochs else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per variant (order of first appearance): n seeds, and mean, std (ddof=1)
    and count of every metric over seeds; columns are (metric, statistic)."""
    metrics = [*FINAL_METRICS, INITIAL]
    stats = runs.groupby("label", sort=False)[metrics].agg(["mean", "std", "count"])
    stats.insert(0, ("n seeds", ""), runs.groupby("label", sort=False).size())
    return stats


def epoch_rows(jobs: list[Job], label_of: dict[int, str]) -> pd.DataFrame:
    """The per-iteration metrics of every finished job, one row per (job, epoch), labelled."""
    frames = [
        job.epochs.reindex(columns=EPOCH_METRICS).assign(label=label_of[job.number])
        for job in jobs
        if job.epochs is not None
    ]
    return pd.concat(frames).reset_index()


def epoch_means(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per (variant, epoch), variants in order of first appearance."""
    order = list(dict.fromkeys(rows["label"]))
    return rows.groupby(["label", "epoch"]).mean().reindex(order, level="label")


def epoch_spread(rows: pd.DataFrame) -> pd.DataFrame:
    """Min and max of eval/quality over seeds per (variant, epoch): the band in quality.png."""
    return rows.groupby(["label", "epoch"])[QUALITY].agg(["min", "max"])


# (d) verdict


def _difference(d: float, name: str) -> str:
    """`d`, already rounded to the tables' precision, in words: a difference that rounds to
    zero is no difference the tables can show, so it reads "equal" rather than "by 0.000"."""
    if d == 0:
        return f"equal to {name} at the precision shown"
    return f"{'higher' if d > 0 else 'lower'} than {name} by {abs(d):.{DECIMALS}f}"


def _compare(stats: pd.DataFrame, metric: str, label: str, other: str, called: str | None = None) -> str | None:
    """How `label` stands against `other` (named `called` in the text) on one metric: the
    difference of means, judged against 2 standard errors of that difference over seeds."""
    (mean_v, sd_v, n_v), (mean_b, sd_b, n_b) = (stats.loc[x, metric][["mean", "std", "count"]] for x in (label, other))
    if n_v == 0 or n_b == 0:
        return None
    d, name = round(mean_v - mean_b, DECIMALS) + 0.0, called or other  # + 0.0: no "-0.000"
    if n_v < 2 or n_b < 2:
        return f"{_difference(d, name)} (one seed: no noise estimate)"
    noise = 2 * math.sqrt(sd_v**2 / n_v + sd_b**2 / n_b)
    if abs(mean_v - mean_b) > noise:
        return f"{_difference(d, name)} (beyond 2 standard errors over seeds)"
    return f"within seed noise of {name} (d = {d:+.{DECIMALS}f}, 2 standard errors = {noise:.{DECIMALS}f})"


def verdict(stats: pd.DataFrame, baseline_of: dict[str, str] | None = None) -> str:
    """Sentences that state only what the numbers show: each variant against its baseline
    (see ``baselines``; without it, the variant labelled "PBAA" if any, else the first)."""
    variants = list(stats.index)
    if baseline_of is None:
        default = "PBAA" if "PBAA" in variants else variants[0]
        baseline_of = {label: default for label in variants}
    bases = [b for b in dict.fromkeys(baseline_of[label] for label in variants) if b in variants]
    lines = [f"Baseline{'s' if len(bases) > 1 else ''}: {', '.join(bases)}."]
    for label in variants:
        base = baseline_of[label]
        if label == base or base not in variants:
            continue
        for metric in VERDICT_METRICS:
            if (sentence := _compare(stats, metric, label, base)) is not None:
                lines.append(f"{label}: final {metric} is {sentence}.")
    ranked = stats[(QUALITY, "mean")].dropna().sort_values(ascending=False)
    if len(ranked) >= 2:
        best, runner_up = ranked.index[:2]
        lines.append(
            f"Highest final {QUALITY}: {best} ({ranked.iloc[0]:.3f}), "
            f"{_compare(stats, QUALITY, best, runner_up, f'runner-up {runner_up}')}."
        )
    elif len(ranked) == 1:
        lines.append(f"Only one variant ({ranked.index[0]}): nothing to compare.")
    return "\n".join(lines)


# (e) plots


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return buffer.getvalue()


def _readable(ax: Axes) -> None:
    """Plain tick labels: matplotlib's offset text (e.g. "1e-10+7.6e-2") printed over the
    axis label when values were close. Each axis spans at least ten steps of the tables'
    precision, so that values equal at that precision sit in a window with short labels."""
    ax.ticklabel_format(useOffset=False, style="plain")
    least = 10 * 10**-DECIMALS
    for get, set_ in ((ax.get_xlim, ax.set_xlim), (ax.get_ylim, ax.set_ylim)):
        low, high = get()
        if high - low < least:
            middle = (low + high) / 2
            set_(middle - least / 2, middle + least / 2)


def figures(means: pd.DataFrame, spread: pd.DataFrame) -> dict[str, Figure]:
    """quality.png (quality per epoch, min-max band over seeds) and pairs.png (pair accuracy
    against the on-policy probability of y-, one point per epoch, as in the paper's Fig. 3),
    as open figures so that their axes can be checked before plots() renders them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(means.index.get_level_values("label")))
    markers = "osD^vP*Xh<>"
    quality, ax = plt.subplots(figsize=(6.5, 4))
    for i, label in enumerate(variants):
        line = means.loc[label, QUALITY].dropna()
        band = spread.loc[label].loc[line.index]
        ax.plot(line.index, line.values, marker=markers[i % len(markers)], label=label, color=f"C{i}")
        ax.fill_between(line.index, band["min"], band["max"], alpha=0.2, color=f"C{i}")
    ax.set(xlabel="epoch (SSO iteration)", ylabel=f"{QUALITY} (mean over seeds; band: min-max)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend()
    _readable(ax)
    pairs, bx = plt.subplots(figsize=(6.5, 4))
    for i, label in enumerate(variants):
        points = means.loc[label, [REJECTED, ACCURACY]].dropna()
        bx.scatter(
            points[REJECTED], points[ACCURACY], marker=markers[i % len(markers)], label=label, color=f"C{i}", alpha=0.8
        )
        for epoch, (x, y) in points.iterrows():
            bx.annotate(str(epoch), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8, color=f"C{i}")
    bx.set(xlabel=f"on-policy probability of y- ({REJECTED})", ylabel=f"pair accuracy ({ACCURACY})")
    bx.legend(title="points: epoch")
    _readable(bx)
    return {"quality.png": quality, "pairs.png": pairs}


def plots(means: pd.DataFrame, spread: pd.DataFrame) -> dict[str, bytes]:
    """The figures as PNG files, closed once rendered."""
    import matplotlib.pyplot as plt

    out = {}
    for name, figure in figures(means, spread).items():
        out[name] = _png(figure)
        plt.close(figure)
    return out


# (f) writing


def _cell(value: float) -> str:
    return DASH if pd.isna(value) else f"{value:.{DECIMALS}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main_table(stats: pd.DataFrame) -> str:
    metrics = [*FINAL_METRICS, INITIAL]
    rows = []
    for label, row in stats.iterrows():
        cells = [label, str(int(row[("n seeds", "")]))]
        for metric in metrics:
            mean, std = row[(metric, "mean")], row[(metric, "std")]
            cells.append(_cell(mean) if pd.isna(mean) else f"{mean:.3f} ± {_cell(std)}")
        rows.append(cells)
    return markdown_table(["variant", "n seeds", *metrics], rows)


def epoch_table_md(means: pd.DataFrame) -> str:
    rows = [[label, str(epoch), *(_cell(row[m]) for m in EPOCH_METRICS)] for (label, epoch), row in means.iterrows()]
    return markdown_table(["variant", "epoch", *EPOCH_METRICS], rows)


def missing_section(jobs: list[Job]) -> str:
    missing = [
        f"- job `{job.number}/` ({' '.join(job.overrides) or 'no overrides'}): {job.problem}"
        for job in jobs
        if job.problem
    ]
    return "\n".join(missing) or "none"


def report_markdown(
    sweep_dir: Path, jobs: list[Job], stats: pd.DataFrame, means: pd.DataFrame, verdict_text: str
) -> str:
    command = sweep_command(sweep_dir)
    finished = sum(job.problem is None for job in jobs)
    return "\n".join(
        [
            f"# SSO ablation report: {sweep_group(sweep_dir)}",
            "",
            "Sweep directory: `.`, the directory of this report; job N ran in `N/`.",
            "",
            f"Reproduce: `{command}`" if command else "Reproduce: (multirun.yaml not found)",
            "",
            f"Finished jobs: {finished} of {len(jobs)}.",
            "",
            "## Final metrics (mean ± std over seeds)",
            "",
            (
                f"Final = the last epoch where the metric was logged; `{INITIAL}` is the policy before any update. "
                f"std {DASH}: one seed."
            ),
            "",
            main_table(stats),
            "",
            "## Per iteration (mean over seeds)",
            "",
            (
                f"`{REJECTED}`: on-policy probability of y− under the plain query. "
                "The last epoch holds only the final policy's quality."
            ),
            "",
            epoch_table_md(means),
            "",
            "## Verdict",
            "",
            verdict_text,
            "",
            "## Missing jobs",
            "",
            missing_section(jobs),
            "",
            "## Plots",
            "",
            "![quality](quality.png)",
            "",
            "![pairs](pairs.png)",
            "",
        ]
    )


def wandb_report(sweep_dir: Path, jobs: list[Job], table: str, verdict_text: str) -> None:
    """A W&B Report over the sweep's group: the table and verdict, quality per epoch, and
    accuracy against on-policy-ness."""
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError:
        print("W&B report skipped: wandb-workspaces is not installed (pip install -e '.[report]')")
        return
    project = next((job.project for job in jobs if job.project), "sso_lightning")
    group = sweep_group(sweep_dir)
    report = wr.Report(project=project, title=f"SSO ablation {group}")
    report.blocks = [
        wr.MarkdownBlock(text=f"{table}\n\n{verdict_text}"),
        wr.PanelGrid(
            runsets=[
                wr.Runset(entity=report.entity, project=project, name=group, filters=f"Metric(\"Group\") == '{group}'")
            ],
            panels=[
                wr.LinePlot(title=QUALITY, x="epoch", y=[QUALITY]),
                wr.ScatterPlot(title="accuracy vs on-policy-ness", x=REJECTED, y=ACCURACY),
            ],
        ),
    ]
    report.save()
    print(f"W&B report: {report.url}")


def shareable(text: str, sweep_dir: Path) -> str:
    """`text` with the sweep's absolute path (e.g. in a FAILED line) made relative to the sweep
    directory, so that report.md and verdict.txt name no path of the machine that ran it."""
    for absolute in sorted({str(sweep_dir.absolute()), str(sweep_dir.resolve())}, key=len, reverse=True):
        text = text.replace(absolute, ".")
    return text


def make_report(sweep_dir: Path, against: str | None = None) -> Path:
    """Everything above, in order; returns the path of report.md."""
    jobs = collect_jobs(sweep_dir)
    baseline_of = baselines(jobs, against)
    label_of = labels(jobs)
    stats = summary_table(run_table(jobs, label_of))
    rows = epoch_rows(jobs, label_of)
    means = epoch_means(rows)
    verdict_text = shareable(verdict(stats, baseline_of), sweep_dir)
    for name, png in plots(means, epoch_spread(rows)).items():
        write_atomic(sweep_dir / name, png)
    write_atomic(sweep_dir / "verdict.txt", verdict_text + "\n")
    report_path = sweep_dir / "report.md"
    write_atomic(report_path, shareable(report_markdown(sweep_dir, jobs, stats, means, verdict_text), sweep_dir))
    table = main_table(stats)
    print(f"{table}\n\n{verdict_text}\n\nreport: {report_path}")
    if wandb_online():
        wandb_report(sweep_dir, jobs, table, verdict_text)
    return report_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sso_lightning.report", description=__doc__.splitlines()[0])
    parser.add_argument("multirun_dir", type=Path, help="a directory written by `python -m sso_lightning -m ...`")
    parser.add_argument(
        "--against",
        metavar="KEY=VALUE",
        help="compare each run with the same one at KEY=VALUE (e.g. loss.aux.weight=0) instead of with PBAA",
    )
    args = parser.parse_args(argv)
    try:
        make_report(args.multirun_dir, args.against)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
