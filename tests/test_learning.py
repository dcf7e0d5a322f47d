"""SSO improves the toy-world policy, measured as a user would: one iteration of the default
pipeline through the command line, judged by the exact toy oracle.

Seed noise, measured with this budget (the test suite's smaller bootstrap, 256 training and 256
held-out prompts, one iteration, lr 1e-4) over seeds 0-7 before this test was written:

* epoch-0 ``eval/quality`` (the same initial policy, only sampling differs): 0.221-0.247, std 0.011;
* gain of ``eval/quality`` after the iteration: +0.112 to +0.170 (mean +0.139);
* epoch-0 data: ``quality_chosen`` 0.283-0.307 > ``quality_raw`` 0.213-0.232 > ``quality_rejected``
  0.067-0.083; ``pair_accuracy`` 0.790-0.860.

So a gain above 0.05 (over four times the evaluation's seed noise, and twice its full range over
eight seeds) is learning, not luck; and each ordering below holds with room on every seed.
"""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import TINY_RUN

BUDGET = [
    *TINY_RUN,
    "trainer.max_epochs=1",
    "data.prompts.num_train=256",
    "data.prompts.num_eval=256",
    "optimizer.lr=1e-4",  # the default 1e-5 needs more iterations than this budget has
    "seed=0",
]
QUALITY_NOISE = 0.011  # std of epoch-0 eval/quality over seeds 0-7 (module docstring)
MARGIN = 0.05


@pytest.fixture(scope="module")
def table(cli, tmp_path_factory) -> pd.DataFrame:
    run_dir = tmp_path_factory.mktemp("learning") / "run"
    result = cli(*BUDGET, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return pd.read_csv(run_dir / "epochs.csv", index_col="epoch")


def test_plain_policy_quality_rises_beyond_seed_noise(table):
    before, after = table.loc[0, "eval/quality"], table.loc[1, "eval/quality"]
    assert MARGIN > 4 * QUALITY_NOISE
    assert after - before > MARGIN, (before, after)


def test_good_principle_beats_plain_beats_bad_in_the_first_data(table):
    chosen, raw, rejected = (table.loc[0, f"data/quality_{name}"] for name in ("chosen", "raw", "rejected"))
    assert chosen > raw + 0.03 and raw > rejected + 0.05, (chosen, raw, rejected)


def test_pairs_are_mostly_ordered_right(table):
    assert table.loc[0, "data/pair_accuracy"] > 0.7
