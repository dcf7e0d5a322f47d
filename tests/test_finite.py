"""A non-finite loss or gradient stops the run at that step, before its update, with one line;
a policy with non-finite weights is never exported."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import TINY

from sso_lightning.errors import RunStopped
from sso_lightning.finite import FiniteSteps
from sso_lightning.train import export_policy


class TwoTensors(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
        self.iteration = 1


def check(metrics: dict, grads: dict) -> None:
    module = TwoTensors()
    for name, grad in grads.items():
        getattr(module, name).grad = torch.tensor(grad)
    trainer = SimpleNamespace(callback_metrics={k: torch.tensor(v) for k, v in metrics.items()}, global_step=4)
    FiniteSteps().on_before_optimizer_step(trainer, module, optimizer=None)


def test_finite_steps_pass_and_each_kind_of_non_finite_value_stops_with_its_names():
    check({"train/loss": 0.5, "train/plus": 1.0, "epoch": 0.0}, {"a": [1.0, 2.0, 3.0], "b": [0.0, 1.0]})
    with pytest.raises(RunStopped) as stop:
        check({"train/loss": float("nan"), "train/plus": 1.0}, {"a": [1.0, 2.0, 3.0]})
    assert "optimizer step 5 (iteration 1)" in str(stop.value) and "train/loss=nan" in str(stop.value)
    assert "train/plus" not in str(stop.value) and "gradients" not in str(stop.value)
    with pytest.raises(RunStopped) as stop:
        check({"generator/loss": float("inf")}, {})
    assert "generator/loss=inf" in str(stop.value)
    with pytest.raises(RunStopped) as stop:
        check({"train/loss": 0.5}, {"a": [1.0, 2.0, 3.0], "b": [0.0, float("-inf")]})
    assert "non-finite gradients in 1 of 2 tensors (first: b)" in str(stop.value)
    assert "loss terms" not in str(stop.value)


def test_a_policy_with_non_finite_weights_is_not_exported(tmp_path):
    model = TwoTensors()
    with torch.no_grad():
        model.b[1] = float("nan")
    with pytest.raises(RunStopped, match=r"non-finite weights in 1 of 2 tensors \(b"):
        export_policy(model, tokenizer=None, path=tmp_path / "policy")
    assert not any(tmp_path.iterdir())


def test_a_learning_rate_that_blows_up_stops_at_the_step_and_exports_nothing(cli, tmp_path):
    """lr 1e3: the first update makes the weights huge, so the second step's gradients are not finite."""
    run_dir = tmp_path / "run"
    base = [o for o in TINY if not o.startswith("trainer.max_epochs")]
    every_step = "checkpoint.every_n_steps=1"
    result = cli(*base, "optimizer.lr=1e3", "trainer.max_epochs=1", every_step, f"hydra.run.dir={run_dir}")
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "optimizer step 2 (iteration 0): non-finite" in errors[0], result.stderr[-2000:]
    last_good = run_dir / "checkpoints" / "step-00000001.ckpt"  # saved before step 2, whose update never happened
    assert f"the last good checkpoint is {last_good}" in errors[0] and last_good.exists()
    assert not (run_dir / "policy").exists() and not (run_dir / "epochs.csv").exists()
