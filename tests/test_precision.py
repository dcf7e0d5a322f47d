"""Lost updates: ``train/unchanged_weights`` (the sampled share of trainable weights an optimizer
step left bit-identical) and the start-of-run warning for a precision setting that loses them."""

from __future__ import annotations

import lightning as L
import pandas as pd
import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch import nn

from sso_lightning.precision import FIX, UnchangedWeights, half_ulp
from sso_lightning.terminal import quiet_lightning
from tests.conftest import run_in_process

METRIC = "train/unchanged_weights"


class Tiny(L.LightningModule):
    """A 64x64 linear layer with a zero bias (every bias element moves in the first step), and
    optionally a frozen 128x128 base in front of it (the LoRA shape: frozen base, small trainable part)."""

    def __init__(self, lr: float, frozen_base: bool = False, batches: int = 1, warmup: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.base = nn.Linear(64, 64, bias=False).requires_grad_(False) if frozen_base else None
        self.layer = nn.Linear(64, 64)
        nn.init.zeros_(self.layer.bias)
        self.lr, self.batches, self.warmup = lr, batches, warmup

    def forward(self, x):
        if self.base is not None:
            x = self.base(x.to(self.base.weight.dtype))
        return self.layer(x.to(self.layer.weight.dtype))

    def training_step(self, batch, batch_idx):
        return (self(batch[0]).float() - 1).pow(2).mean()

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.lr)
        if not self.warmup:
            return optimizer
        # a linear warmup from 0, as scheduler=cosine|linear has: the rate at the start is 0
        warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, step / 10))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": warmup, "interval": "step"}}

    def train_dataloader(self):
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(4 * self.batches, 64, generator=generator)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs), batch_size=4)


class Recorder(Logger):
    """Every ``log_metrics`` call, in order (a CSV file merges the rows of one step)."""

    name, version = "recorder", 0

    def __init__(self):
        super().__init__()
        self.rows: list[dict[str, float]] = []

    def log_metrics(self, metrics, step=None):
        self.rows.append(dict(metrics))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def fit(module, root, precision="32-true", callback=None, accumulate=1, steps=1) -> list[float]:
    """Train ``steps`` optimizer steps with the callback; the metric's values, as logged."""
    recorder = Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        max_steps=steps,
        accumulate_grad_batches=accumulate,
        callbacks=[callback or UnchangedWeights()],
        logger=recorder,
        default_root_dir=root,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with quiet_lightning():
        trainer.fit(module)
    return [row[METRIC] for row in recorder.rows if METRIC in row]


def warnings_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


def trainable_bits(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def unchanged_share(before: dict[str, torch.Tensor], module) -> float:
    """Every trainable element, compared bit for bit: the share the metric estimates."""
    after = dict(module.named_parameters())
    same = sum(int((before[n].view(torch.int16) == after[n].detach().view(torch.int16)).sum()) for n in before)
    return same / sum(t.numel() for t in before.values())


@pytest.mark.parametrize("cap, tolerance", [(10_000, 1e-6), (256, 0.04)])
def test_metric_is_the_share_of_weights_left_bit_identical(tmp_path, cap, tolerance):
    """bfloat16 weights at lr 1e-4: part of the weight matrix moves, none of the zero bias stays.
    With every element sampled the metric is exact; with 256 of 4096 it is an estimate, each
    tensor weighted by its size (an unweighted mean would count the 64 bias elements 16-fold)."""
    module = Tiny(lr=1e-4).to(torch.bfloat16)
    before = trainable_bits(module)
    values = fit(module, tmp_path, callback=UnchangedWeights(cap=cap))
    truth = unchanged_share(before, module)
    assert 0.2 < truth < 0.9  # neither all nor nothing: the comparison has something to get wrong
    assert values == pytest.approx([truth], abs=tolerance)


@pytest.mark.parametrize("warmup", [False, True], ids=["constant", "warmup"])
@pytest.mark.parametrize(
    "dtype, precision, low, high",
    [
        (torch.float32, "32-true", 0.0, 0.01),
        (torch.float32, "bf16-mixed", 0.0, 0.01),  # bf16 compute, float32 master weights
        (torch.float32, "bf16-true", 0.9, 1.0),  # the plugin casts the weights to bfloat16
        (torch.bfloat16, "32-true", 0.9, 1.0),
    ],
)
def test_metric_and_warning_at_the_papers_learning_rate(tmp_path, capsys, dtype, precision, low, high, warmup):
    """At lr 5e-7, float32 weights all move and bfloat16 weights almost all stay; the warning
    comes once, naming the fix, exactly when they stay. Under a warmup from 0 it judges the
    peak rate, not the 0 of the first step (the metric is then read on a step past the warmup)."""
    values = fit(Tiny(lr=5e-7, batches=12, warmup=warmup).to(dtype), tmp_path, precision=precision, steps=12)
    assert low <= values[-1] <= high
    lines = warnings_in(capsys.readouterr().err)
    if high == 1.0:
        assert len(lines) == 1 and FIX in lines[0] and "lr 5e-07" in lines[0], lines
        assert f"trainer.precision={precision}" in lines[0]
    else:
        assert lines == []


def test_frozen_bfloat16_base_with_float32_trainable_part(tmp_path, capsys):
    """LoRA's shape: a frozen bfloat16 base and float32 adapters. Only what trains counts: the
    updates land, and there is nothing to warn about."""
    module = Tiny(lr=5e-7, frozen_base=True)
    module.base.to(torch.bfloat16)
    module.base.forward = lambda x: nn.functional.linear(x.to(torch.bfloat16), module.base.weight).float()
    values = fit(module, tmp_path)
    assert values[0] < 0.01
    assert warnings_in(capsys.readouterr().err) == []


def test_only_steps_where_the_optimizer_stepped_are_counted(tmp_path):
    """Gradient accumulation over 2 batches, 2 optimizer steps of float32 weights: two values,
    both about 0 (a batch that only accumulates leaves every weight as it was)."""
    values = fit(Tiny(lr=1e-2, batches=4), tmp_path, accumulate=2, steps=2)
    assert len(values) == 2 and max(values) < 0.01, values


def test_half_ulp():
    assert half_ulp(torch.tensor([1.0, 1.5, -0.75, 0.0]), torch.bfloat16).tolist() == [2**-8, 2**-8, 2**-9, 0.0]
    assert half_ulp(torch.tensor([1.0]), torch.float32).item() == 2**-24
    assert half_ulp(torch.tensor([2**-20]), torch.float16).item() == 2**-25  # subnormal spacing 2**-24


def test_a_run_with_bfloat16_weights_warns_and_logs_the_metric(tmp_path, model_dir, capsys):
    """The whole pipeline, bf16-true at the paper's learning rate: one warning line at the start,
    and metrics.csv holds the metric per step, nearly every weight left as it was."""
    run_dir = run_in_process(
        tmp_path,
        model_dir,
        "model.dtype=bfloat16",
        "trainer.precision=bf16-true",
        "optimizer.lr=5e-7",
        "trainer.max_epochs=1",
    )
    lines = warnings_in(capsys.readouterr().err)
    assert len(lines) == 1 and FIX in lines[0], lines
    values = pd.read_csv(run_dir / "metrics.csv")[METRIC].dropna().tolist()
    assert values and min(values) > 0.9, values


def test_lora_on_a_bfloat16_base_learns_without_a_warning(tmp_path, model_dir, capsys):
    """model.dtype=bfloat16 with LoRA: peft keeps the adapters float32, and only they train, so
    the frozen bfloat16 base neither warns nor counts. (The first step leaves lora_A as it was:
    lora_B starts at 0, so A's gradient is 0; the steps after it move both.)"""
    run_dir = run_in_process(
        tmp_path, model_dir, "model.dtype=bfloat16", "model.lora.enabled=true", "model.lora.r=4", "trainer.max_epochs=1"
    )
    assert warnings_in(capsys.readouterr().err) == []
    values = pd.read_csv(run_dir / "metrics.csv")[METRIC].dropna().tolist()
    assert len(values) >= 2 and values[-1] < 0.01, values


def test_an_optimizer_that_keeps_bfloat16_updates_is_not_warned_about(tmp_path, capsys):
    """torch-optimi's AdamW sums bfloat16 updates with Kahan compensation: nothing is lost,
    though a weight may stay bit-identical for a while (so the metric stays high)."""
    import optimi  # a dev requirement, so this test runs wherever the suite does

    module = Tiny(lr=5e-7).to(torch.bfloat16)
    module.configure_optimizers = lambda: optimi.AdamW(module.parameters(), lr=5e-7)
    values = fit(module, tmp_path)
    assert values[0] > 0.9
    assert warnings_in(capsys.readouterr().err) == []
