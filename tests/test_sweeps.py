"""Every sweep file's grid points are valid overrides of the entry point."""

from __future__ import annotations

import itertools

import pytest
import yaml
from hydra import compose, initialize_config_dir

from conftest import ROOT
from sso_lightning.__main__ import CONFIG_DIR, check_group_overrides

SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_wandb_sweep_grid_composes(path):
    sweep = yaml.safe_load(path.read_text())
    assert sweep["command"][1:4] == ["python", "-m", "sso_lightning"] and "${args_no_hyphens}" in sweep["command"]
    names = list(sweep["parameters"])
    grid = list(itertools.product(*(sweep["parameters"][n]["values"] for n in names)))
    assert grid
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        for values in grid:
            overrides = [f"{n}={v}" for n, v in zip(names, values)]
            check_group_overrides(overrides)
            cfg = compose(config_name="config", overrides=overrides)
            assert cfg.seed == dict(zip(names, values)).get("seed", cfg.seed)
