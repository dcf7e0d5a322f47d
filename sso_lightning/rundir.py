"""A new run never writes into a directory that holds an earlier run.

Hydra writes a run's ``.hydra/`` files and its log into ``hydra.run.dir`` before the run starts, so
the check must come earlier than the run itself: ``RefuseExistingRuns`` is a Hydra callback
(``hydra.callbacks`` in conf/config.yaml) whose ``on_run_start`` and ``on_multirun_start`` are called
after the config is composed and before Hydra writes anything.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from sso_lightning.errors import ConfigError

SWEEP_FILE = "multirun.yaml"  # what Hydra writes first into a sweep directory


def requeued() -> bool:
    """A SLURM job that was requeued (after a preemption or a SIGUSR1) runs its command again, in
    the directory it had: it goes on there (docs/resume.md#slurm)."""
    return os.environ.get("SLURM_RESTART_COUNT", "0") not in ("", "0")


def run_outputs(run_dir: Path) -> list[Path]:
    """What a run writes into its directory that a new run would overwrite: the exported
    policy, the metrics and the snapshots."""
    return [run_dir / "policy", run_dir / "metrics.csv", *sorted((run_dir / "data").glob("epoch_*.jsonl"))]


def earlier_run(run_dir: Path) -> Path | None:
    """The first file of an earlier run in ``run_dir`` (its composed config, or one of its
    outputs), or None for a new or empty directory."""
    found = [run_dir / ".hydra" / "config.yaml", *run_outputs(run_dir)]
    return next((path for path in found if path.exists()), None)


def refuse_existing_run(run_dir: Path, option: str = "hydra.run.dir") -> None:
    """A ConfigError when ``run_dir`` holds an earlier run; ``option`` is the setting to change."""
    found = earlier_run(run_dir)
    if found is not None:
        raise ConfigError(f"{found} already exists: {run_dir} holds an earlier run; choose a new {option}")


def refuse_existing_sweep(sweep_dir: Path) -> None:
    """A ConfigError when ``sweep_dir`` holds an earlier sweep or run (in it, or in a job directory
    right under it, where Hydra puts its jobs)."""
    if (sweep_dir / SWEEP_FILE).exists():
        raise ConfigError(
            f"{sweep_dir / SWEEP_FILE} already exists: {sweep_dir} holds an earlier sweep; choose a new hydra.sweep.dir"
        )
    if sweep_dir.is_dir():
        for directory in [sweep_dir, *sorted(p for p in sweep_dir.iterdir() if p.is_dir())]:
            refuse_existing_run(directory, "hydra.sweep.dir")


def directory(config: DictConfig, key: str) -> Path | None:
    """The directory ``key`` names (resolved as Hydra resolves it next), or None if it does not resolve
    here (the run's own check_fresh still looks at it before any work)."""
    try:
        value = OmegaConf.select(config, key, throw_on_resolution_failure=True)
    except Exception:
        return None
    return None if value is None else Path(str(value))


def stop_if(check, path: Path | None) -> None:
    if path is None:
        return
    try:
        check(path)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


class RefuseExistingRuns(Callback):
    """Stops a run (a sweep) whose directory holds an earlier one before Hydra writes into it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # a requeued SLURM job goes on in its own directory; Lightning's DDP processes (started
        # with hydra.output_subdir=null) join rank 0's, where Hydra then writes only their logs
        if not requeued() and config.hydra.output_subdir is not None:
            stop_if(refuse_existing_run, directory(config, "hydra.run.dir"))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        stop_if(refuse_existing_sweep, directory(config, "hydra.sweep.dir"))
