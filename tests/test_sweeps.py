"""Every sweep file's grid points are valid overrides of the entry point, and each W&B sweep
runs the same grid as the Hydra sweep of the same name."""

from __future__ import annotations

import itertools
import re

import pytest
import yaml
from conftest import ROOT
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from sso_lightning.__main__ import CONFIG_DIR, check_group_overrides

HYDRA_SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
WANDB_SWEEPS = sorted((ROOT / "sweeps" / "wandb").glob("*.yaml"))


def hydra_grid(path) -> dict[str, list[str]]:
    params = yaml.safe_load(path.read_text())["hydra"]["sweeper"]["params"]
    return {key: str(values).split(",") for key, values in params.items()}


def compose_all(grid: dict[str, list], extra: list[str] = ()) -> list:
    names = list(grid)
    configs = []
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        for values in itertools.product(*(grid[n] for n in names)):
            overrides = [*extra, *(f"{n}={v}" for n, v in zip(names, values))]
            check_group_overrides(overrides)
            configs.append((dict(zip(names, values)), compose(config_name="config", overrides=overrides)))
    return configs


@pytest.mark.parametrize("path", HYDRA_SWEEPS, ids=lambda p: p.name)
def test_hydra_sweep_grid_composes_and_names_every_variant(path):
    configs = compose_all(hydra_grid(path), [f"+sweep={path.stem}"])
    assert len(configs) >= 2
    for values, cfg in configs:
        assert cfg.seed == int(values["seed"])
        assert cfg.variant, "every sweep job runs a named variant, so the report can label it"


@pytest.mark.parametrize("path", WANDB_SWEEPS, ids=lambda p: p.name)
def test_wandb_sweep_runs_the_hydra_sweeps_grid(path):
    sweep = yaml.safe_load(path.read_text())
    assert sweep["command"][1:4] == ["python", "-m", "sso_lightning"] and "${args_no_hyphens}" in sweep["command"]
    grid = {name: [str(v) for v in p["values"]] for name, p in sweep["parameters"].items()}
    assert grid == hydra_grid(ROOT / "sweeps" / path.name)
    assert compose_all(grid)


def documented_job_counts() -> dict[str, int]:
    """``+sweep=<name>`` -> the "(N jobs)" the sweep table of docs/experiments.md states."""
    counts = {}
    for line in (ROOT / "docs" / "experiments.md").read_text().splitlines():
        sweep = re.search(r"`python -m sso_lightning -m \+sweep=(\w+)`", line)
        jobs = re.search(r"\((\d+) jobs\)", line)
        if line.startswith("|") and sweep and jobs:
            counts[sweep.group(1)] = int(jobs.group(1))
    return counts


def hydra_jobs(name: str) -> list[list[str]]:
    """The jobs Hydra's own sweeper expands ``-m +sweep=<name>`` into."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"+sweep={name}"], return_hydra_config=True)
    params = [f"{key}={values}" for key, values in cfg.hydra.sweeper.params.items()]  # as BasicSweeper reads them
    overrides = OverridesParser.create().parse_overrides(params)
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def test_documented_job_counts_are_what_each_sweep_expands_to():
    counts = documented_job_counts()
    assert sorted(counts) == sorted(p.stem for p in HYDRA_SWEEPS)
    for name, jobs in counts.items():
        expanded = hydra_jobs(name)
        assert len(expanded) == jobs, name
        assert len({tuple(job) for job in expanded}) == jobs, name  # all distinct
