"""Two processes (DDP on CPU, gloo) against one: the same global batch gives the same losses
and the same trained policy, and regeneration writes one snapshot per epoch."""

from __future__ import annotations

import json
import random

import pandas as pd
import torch
from conftest import TINY
from transformers import AutoModelForCausalLM

from sso_lightning.toy.task import ToyPrompts

DDP = ["trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]


def test_two_process_ddp_equals_one_process_on_the_same_global_batch(cli, tmp_path):
    rng = random.Random(0)
    records = []
    for query in ToyPrompts(num_train=16, num_eval=0, seed=7).load().train:
        digits = query.split()[1:]
        records.append(
            {
                "instruction": query,
                "system": "",
                "p_system": "give only the digits",
                "n_system": "talk a lot before the digits",
                "chosen": " ".join(sorted(digits)),
                "rejected": "well ok " + " ".join(rng.sample(digits, len(digits))),
                "raw": " ".join(digits),
            }
        )
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    common = [*TINY, "trainer.max_epochs=1", f"data.offline={data}", "data.shuffle=false", "data.prompts.num_eval=8"]

    single = cli(*common, "data.batch_size=8", f"hydra.run.dir={tmp_path / 'one'}")
    assert single.returncode == 0, single.stderr[-3000:]
    double = cli(*common, *DDP, "data.batch_size=4", f"hydra.run.dir={tmp_path / 'two'}")
    assert double.returncode == 0, double.stderr[-3000:]

    losses = [pd.read_csv(tmp_path / run / "metrics.csv")["train/loss"].dropna().tolist() for run in ("one", "two")]
    assert len(losses[0]) == len(losses[1]) == 2
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), atol=1e-5, rtol=1e-5)
    one, two = (AutoModelForCausalLM.from_pretrained(tmp_path / run / "policy") for run in ("one", "two"))
    for a, b in zip(one.parameters(), two.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_ddp_regeneration_writes_one_gathered_snapshot_per_epoch(cli, tmp_path):
    run_dir = tmp_path / "run"
    result = cli(
        *TINY,
        *DDP,
        "data.prompts.num_train=20",
        "data.prompts.num_eval=8",
        "data.batch_size=4",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(run_dir / "epochs.csv", index_col="epoch")
    for epoch in (0, 1):
        records = [json.loads(line) for line in (run_dir / "data" / f"epoch_{epoch}.jsonl").read_text().splitlines()]
        assert len(records) == round(table.loc[epoch, "data/kept_fraction"] * 20)  # both ranks' shares, once
        assert len({r["instruction"] for r in records}) == len(records)
    assert sorted(p.name for p in (run_dir / "data").iterdir()) == ["epoch_0.jsonl", "epoch_1.jsonl"]
    assert (run_dir / "policy" / "config.json").exists()
