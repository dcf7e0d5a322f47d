"""The toy model is a model like any other: every model option applies to it through the same
loading code as a hub model (the bootstrap only decides where the weights come from)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import TINY
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from sso_lightning.__main__ import CONFIG_DIR
from sso_lightning.models import has_adapters


def toy_model(cache_dir, *overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*TINY, f"model.cache_dir={cache_dir}", *overrides])
    model = instantiate(cfg.model)
    return model, *model.load()


def test_every_model_option_reaches_the_toy_policy(cache_dir):
    _, plain, _ = toy_model(cache_dir)
    assert plain.dtype == torch.float32 and not has_adapters(plain) and not plain.is_gradient_checkpointing

    _, lora, _ = toy_model(cache_dir, "model.lora.enabled=true", "model.lora.r=4")
    assert has_adapters(lora) and lora.peft_config["default"].r == 4
    assert {n for n, p in lora.named_parameters() if p.requires_grad} == {
        n for n, _ in lora.named_parameters() if "lora_" in n
    }

    _, other, _ = toy_model(
        cache_dir, "model.dtype=bfloat16", "model.attn_implementation=eager", "model.gradient_checkpointing=true"
    )
    assert other.dtype == torch.bfloat16 and other.config._attn_implementation == "eager"
    assert other.is_gradient_checkpointing

    model, policy, _ = toy_model(cache_dir, "model.compile=true")
    assert hasattr(model.training_forward(policy), "_torchdynamo_orig_callable")  # what torch.compile returns
    assert not hasattr(toy_model(cache_dir)[0].training_forward(plain), "_torchdynamo_orig_callable")

    default, _, _ = toy_model(cache_dir)
    unpacked, _, _ = toy_model(cache_dir, "model.packing=false")
    assert default.packs(plain) and not unpacked.packs(plain)  # the toy Llama packs exactly, unless told not to


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.lora.enabled=true", "model.lora.r=4"],
        ["model.lora.enabled=true", "model.lora.r=4", "variant=sso_two_stage"],
        ["model.dtype=bfloat16", "model.attn_implementation=eager"],
    ],
    ids=["lora", "lora-two_stage", "bf16-eager"],
)
def test_toy_runs_with_model_options(cli, tmp_path, overrides):
    run_dir = tmp_path / "run"
    result = cli(
        *TINY,
        "trainer.max_epochs=1",
        "data.prompts.num_train=16",
        "data.prompts.num_eval=8",
        *overrides,
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert pd.read_csv(run_dir / "epochs.csv", index_col="epoch").loc[0, "train/loss"] > 0
    if "model.lora.enabled=true" in overrides:
        assert json.loads((run_dir / "policy" / "adapter_config.json").read_text())["r"] == 4
