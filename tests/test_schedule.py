"""Learning-rate schedules: the rate at every optimizer step of a run equals Hugging Face's own
schedule (what LLaMA-Factory, the authors' trainer, uses) over the steps the schedule spans, in
both schemes, restarted in every iteration or continued across them."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from conftest import run_in_process
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

from sso_lightning.errors import ConfigError
from sso_lightning.schedule import LearningRateSchedule

HF = {"cosine": get_cosine_schedule_with_warmup, "linear": get_linear_schedule_with_warmup}
LR = 1e-3


def hf_rates(shape: str, warmup: int, total: int, steps: int) -> list[float]:
    """The rates Hugging Face's scheduler gives the first ``steps`` optimizer steps."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    scheduler = HF[shape](optimizer, num_warmup_steps=warmup, num_training_steps=total)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def run_rates(tmp_path, model_dir, *overrides) -> tuple[list[tuple[int, str]], list[float]]:
    """(the iteration and phase of every optimizer step, the rate it used) from a run's metrics.csv."""
    run_dir = run_in_process(
        tmp_path,
        model_dir,
        "data.prompts.num_train=24",
        "data.prompts.num_eval=4",
        "data.batch_size=4",
        "trainer.max_epochs=3",
        f"optimizer.lr={LR}",
        *overrides,
    )
    metrics = pd.read_csv(run_dir / "metrics.csv")
    rates = metrics.dropna(subset=["train/lr"]).set_index("step")["train/lr"]
    phases = {}
    for column, phase in (("train/loss", "policy"), ("generator/loss", "generator")):
        if column in metrics:
            rows = metrics.dropna(subset=[column])
            phases.update({step: (int(epoch), phase) for step, epoch in zip(rows["step"], rows["epoch"])})
    steps = sorted(phases)
    assert steps == list(range(len(steps))) == sorted(rates.index)
    return [phases[s] for s in steps], [rates[s] for s in steps]


def runs_of(phases: list[tuple[int, str]]) -> list[tuple[str, int]]:
    """The steps of each epoch (one phase of one iteration): [(phase, number of steps), ...]."""
    runs = []
    for epoch in phases:
        if runs and runs[-1][0] == epoch:
            runs[-1] = (epoch, runs[-1][1] + 1)
        else:
            runs.append((epoch, 1))
    return [(phase, steps) for (_, phase), steps in runs]


@pytest.mark.parametrize(
    "variant, shape, across",
    [
        ("sso", "cosine", "restart"),
        ("sso", "linear", "continue"),
        ("sso_two_stage", "linear", "restart"),
        ("sso_two_stage", "cosine", "continue"),
    ],
)
def test_rate_at_every_step_is_hugging_faces_schedule(tmp_path, model_dir, variant, shape, across):
    phases, rates = run_rates(
        tmp_path,
        model_dir,
        f"variant={variant}",
        f"scheduler={shape}",
        "scheduler.warmup_ratio=0.2",
        f"scheduler.across_iterations={across}",
    )
    runs = runs_of(phases)
    assert len(runs) == 3 * (2 if variant == "sso_two_stage" else 1)  # one run of steps per epoch
    expected = []
    if across == "restart":
        for _, steps in runs:
            expected += hf_rates(shape, math.ceil(0.2 * steps), steps, steps)
    else:
        first = {}
        for phase, steps in runs:
            first.setdefault(phase, steps)
        taken = dict.fromkeys(first, 0)
        for phase, steps in runs:
            total = first[phase] * 3
            span = hf_rates(shape, math.ceil(0.2 * total), total, total + 1)
            expected += [span[min(i, total)] for i in range(taken[phase], taken[phase] + steps)]
            taken[phase] += steps
    torch.testing.assert_close(torch.tensor(rates, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64))


def test_warmup_in_steps_overrides_the_ratio(tmp_path, model_dir):
    phases, rates = run_rates(
        tmp_path, model_dir, "scheduler=linear", "scheduler.warmup_ratio=0.5", "scheduler.warmup_steps=2"
    )
    expected = []
    for _, steps in runs_of(phases):
        expected += hf_rates("linear", 2, steps, steps)
    torch.testing.assert_close(torch.tensor(rates, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64))


def test_without_a_scheduler_the_rate_stays(tmp_path, model_dir):
    run_dir = run_in_process(tmp_path, model_dir, "data.prompts.num_train=8", "data.prompts.num_eval=4")
    assert "train/lr" not in pd.read_csv(run_dir / "metrics.csv")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"shape": "step"}, "scheduler.shape=step is not valid (valid: cosine, linear)"),
        ({"across_iterations": "never"}, "scheduler.across_iterations=never is not valid (valid: restart, continue)"),
        ({"warmup_ratio": 1.0}, "scheduler.warmup_ratio must be in [0, 1)"),
        ({"warmup_steps": -1}, "scheduler.warmup_steps must be >= 0 or null"),
    ],
)
def test_bad_settings_name_the_option(kwargs, message):
    with pytest.raises(ConfigError) as error:
        LearningRateSchedule(**kwargs)
    assert str(error.value).startswith(message)
