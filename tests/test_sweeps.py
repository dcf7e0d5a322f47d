"""Every sweep file's grid points are valid overrides of the entry point, and each W&B sweep
runs the same grid as the Hydra sweep of the same name."""

from __future__ import annotations

import itertools

import pytest
import yaml
from conftest import ROOT
from hydra import compose, initialize_config_dir

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
