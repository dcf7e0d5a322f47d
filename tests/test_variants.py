"""Every named variant composes to the switches its row in docs/experiments.md states, read both from the
composed config and from the objective and scheme built from it. That table is the
reference: a variant config that drifts from it (e.g. ``detach_weight: true`` slipped into one
variant) fails here."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from sso_lightning.__main__ import CONFIG_DIR


def documented_variant_rows() -> dict[str, dict[str, str]]:
    """The variant table of docs/experiments.md, one dict per variant, keyed by the first word of each header cell."""
    lines = (ROOT / "docs" / "experiments.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| `variant=` |"))
    header = [cell.strip().split(" ")[0].strip("`") for cell in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = dict(zip(header, (cell.strip() for cell in line.strip("|").split("|"))))
        rows[cells["variant="].strip("`")] = cells
    return rows


ROWS = documented_variant_rows()
CONFIGS = sorted(p.stem for p in (Path(CONFIG_DIR) / "variant").glob("*.yaml"))
W_STATES = {"attached": (True, False), "detached": (True, True), "off": (False, False)}  # (weight, detach_weight)
SCHEMES = {"combined": "Combined", "two_stage": "TwoStage"}


def test_the_documented_table_has_one_row_per_variant_config():
    assert sorted(ROWS) == CONFIGS


@pytest.mark.parametrize("name", CONFIGS)
def test_variant_composes_to_its_documented_row(name):
    row = ROWS[name]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"variant={name}"])
    weight, detach = W_STATES[row["W"]]
    plus = {"on": True, "off": False}[row["L+"]]
    expected = {"weight": weight, "detach_weight": detach, "g": float(row["g"]), "plus": plus, "minus": row["L−"]}

    assert cfg.variant == row["name"]
    assert {key: cfg.loss[key] for key in expected} == expected
    objective = instantiate(cfg.loss)
    assert {key: getattr(objective, key) for key in expected} == expected
    assert type(objective.base).__name__.lower() == row["base"]
    assert type(instantiate(cfg.scheme)).__name__ == SCHEMES[row["scheme"]]
    assert cfg.data.regenerate == {"true": True, "false": False}[row["data.regenerate"]]
