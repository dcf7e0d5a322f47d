"""What one iteration trains on, checked where it happens, in whole runs (in this process, so
generation can be recorded):

* each response is sampled from its own prompt: y+ from x+, y- from x-, yo from x, in both
  schemes and in both phases of two_stage;
* the stored reference log-probs come from the right weights: the policy that generated the
  iteration's data (``data.reference=iteration``), the starting model (``initial``), the policy
  and not the generator (two_stage), and a fresh scoring for data read from a file.

Generation is replaced by a recorder that answers every prompt with a unique digit string, so
each answer traces back to the prompt it was given, and that keeps a copy of the weights it was
called with. Log-probs are recomputed here sequence by sequence, independently of the project's
scoring code.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import run_in_process
from transformers import AutoModelForCausalLM, AutoTokenizer

from sso_lightning import train
from sso_lightning.data.principles import PrincipleLibrary
from sso_lightning.data.steering import render_prompt
from sso_lightning.generation import Response, Sampling
from sso_lightning.pipeline import IterationPipeline
from sso_lightning.toy.oracle import ToyOracle

RUN = [
    "data.prompts.num_train=8",
    "data.prompts.num_eval=4",
    "data.batch_size=4",
    "optimizer.lr=1e-3",  # large enough that every iteration's weights differ clearly
]


class RecordingGenerate:
    """Stands in for the pipeline's engine: answers each prompt with a new digit string
    ("1", "2", ..., "1 0", ...) and remembers the prompt of every answer and the weights of every call."""

    def __init__(self):
        self.prompt_of: dict[tuple[int, ...], tuple[int, ...]] = {}
        self.weights: list[dict[str, torch.Tensor]] = []

    def generate(self, model, tokenizer, prompts, sampling, on_batch=None):
        self.weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        answers = []
        for prompt in prompts:
            words = list(str(len(self.prompt_of) + 1))
            ids = (*tokenizer.convert_tokens_to_ids(words), tokenizer.eos_token_id)
            self.prompt_of[ids] = tuple(prompt)
            answers.append(Response(ids, " ".join(words), True))
        return answers

    def close(self):
        pass


def recorded_run(monkeypatch, tmp_path, model_dir, *overrides) -> RecordingGenerate:
    """A run whose pipeline samples with the recorder (evaluation keeps the run's own engine)."""
    recorder = RecordingGenerate()
    real = train.IterationPipeline
    monkeypatch.setattr(
        train, "IterationPipeline", lambda *args, **kwargs: real(*args, **{**kwargs, "engine": recorder})
    )
    run_in_process(tmp_path, model_dir, *RUN, *overrides)
    return recorder


def records(tmp_path, name: str) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "run" / "data" / name).read_text().splitlines()]


EXPECTED_PROMPT = {"chosen": "p_system", "rejected": "n_system", "raw": None}  # y+ | x+, y- | x-, yo | x


def assert_each_answer_came_from_its_own_prompt(recorder, tokenizer, rows: list[dict], fields: tuple[str, ...]):
    assert rows
    for row in rows:
        for field in fields:
            given = recorder.prompt_of[tuple(row["token_ids"][field])]
            system = row[EXPECTED_PROMPT[field]] if EXPECTED_PROMPT[field] else None
            assert list(given) == render_prompt(tokenizer, row["instruction"], system), (field, row["instruction"])
            assert contains(given, tokenizer(row["instruction"], add_special_tokens=False)["input_ids"])
            for other in ("p_system", "n_system"):
                principle = tokenizer(row[other], add_special_tokens=False)["input_ids"]
                assert contains(given, principle) == (other == EXPECTED_PROMPT[field]), (field, other)


def contains(ids, part) -> bool:
    return any(list(ids[i : i + len(part)]) == list(part) for i in range(len(ids) - len(part) + 1))


@pytest.mark.parametrize("variant", ["sso", "sso_offline"])
def test_combined_scheme_samples_each_response_from_its_own_prompt(monkeypatch, tmp_path, model_dir, variant):
    recorder = recorded_run(monkeypatch, tmp_path, model_dir, f"variant={variant}")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for name in ("epoch_0.jsonl", "epoch_1.jsonl") if variant == "sso" else ("epoch_0.jsonl",):
        rows = records(tmp_path, name)
        assert_each_answer_came_from_its_own_prompt(recorder, tokenizer, rows, tuple(EXPECTED_PROMPT))


def test_two_stage_samples_each_response_from_its_own_prompt_in_both_phases(monkeypatch, tmp_path, model_dir):
    recorder = recorded_run(monkeypatch, tmp_path, model_dir, "variant=sso_two_stage")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for k in (0, 1):
        generator_data = records(tmp_path, f"epoch_{k}_generator.jsonl")  # the policy's y+, y-, yo
        assert_each_answer_came_from_its_own_prompt(recorder, tokenizer, generator_data, tuple(EXPECTED_PROMPT))
        policy_data = records(tmp_path, f"epoch_{k}.jsonl")  # the generator's fresh y+, y-
        assert_each_answer_came_from_its_own_prompt(recorder, tokenizer, policy_data, ("chosen", "rejected"))


# ------------------------------------------------------------------------------------ references


def model_with(model_dir, weights: dict[str, torch.Tensor]):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.load_state_dict(weights)
    return model.eval()


PROMPT_FIELDS = {"x": None, "x+": "p_system", "x-": "n_system"}
RESPONSE_FIELDS = {"y+": "chosen", "y-": "rejected", "yo": "raw"}


@torch.no_grad()
def logp(model, tokenizer, row: dict, key: str) -> float:
    """Summed log-prob of the key's response after its prompt, one sequence, no padding."""
    prompt_key, response_key = key.split("|")
    system = row[PROMPT_FIELDS[prompt_key]] if PROMPT_FIELDS[prompt_key] else None
    prompt = render_prompt(tokenizer, row["instruction"], system)
    response = row["token_ids"][RESPONSE_FIELDS[response_key]]
    ids = torch.tensor([prompt + response])
    token_logps = model(input_ids=ids).logits[0, :-1].double().log_softmax(-1).gather(-1, ids[0, 1:, None])
    return float(token_logps[len(prompt) - 1 :].sum())


def stored_and_fresh(model, tokenizer, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    stored, fresh = [], []
    for row in rows:
        for key, value in row["ref_logps"].items():
            stored.append(value)
            fresh.append(logp(model, tokenizer, row, key))
    return torch.tensor(stored, dtype=torch.float64), torch.tensor(fresh, dtype=torch.float64)


def assert_reference(model_dir, rows, weights, not_weights) -> None:
    """The stored reference equals a fresh scoring with ``weights``, and not with ``not_weights``."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    stored, fresh = stored_and_fresh(model_with(model_dir, weights), tokenizer, rows)
    torch.testing.assert_close(stored, fresh, atol=1e-4, rtol=1e-5)
    _, other = stored_and_fresh(model_with(model_dir, not_weights), tokenizer, rows)
    assert (stored - other).abs().max() > 1e-2  # the two candidates are far apart: the check has power


def test_iteration_reference_is_the_policy_that_generated_the_epoch(monkeypatch, tmp_path, model_dir):
    recorder = recorded_run(monkeypatch, tmp_path, model_dir, "variant=sso", "data.reference=iteration")
    initial, after_epoch_0 = recorder.weights  # epoch 0's and epoch 1's generation
    assert_reference(model_dir, records(tmp_path, "epoch_0.jsonl"), initial, after_epoch_0)
    assert_reference(model_dir, records(tmp_path, "epoch_1.jsonl"), after_epoch_0, initial)


def test_initial_reference_is_the_starting_model_in_every_epoch(monkeypatch, tmp_path, model_dir):
    recorder = recorded_run(monkeypatch, tmp_path, model_dir, "variant=sso", "data.reference=initial")
    initial, after_epoch_0 = recorder.weights
    assert_reference(model_dir, records(tmp_path, "epoch_1.jsonl"), initial, after_epoch_0)


def test_two_stage_reference_is_the_policy_not_the_generator(monkeypatch, tmp_path, model_dir):
    recorder = recorded_run(monkeypatch, tmp_path, model_dir, "variant=sso_two_stage")
    # per iteration: the policy samples for the generator, then the trained generator samples for the policy
    policy_0, generator_0, policy_1, generator_1 = recorder.weights
    assert_reference(model_dir, records(tmp_path, "epoch_0.jsonl"), policy_0, generator_0)
    assert_reference(model_dir, records(tmp_path, "epoch_1.jsonl"), policy_1, generator_1)
    assert_reference(model_dir, records(tmp_path, "epoch_1_generator.jsonl"), policy_1, generator_0)


def test_offline_data_gets_fresh_reference_log_probs(monkeypatch, tmp_path, model_dir):
    recorder = recorded_run(monkeypatch, tmp_path / "first", model_dir, "variant=sso", "trainer.max_epochs=1")
    rows = records(tmp_path / "first", "epoch_0.jsonl")
    perturbed = tmp_path / "perturbed.jsonl"
    perturbed.write_text(
        "".join(json.dumps({**r, "ref_logps": {k: v - 5.0 for k, v in r["ref_logps"].items()}}) + "\n" for r in rows)
    )
    run_dir = tmp_path / "offline"
    recorded_run(monkeypatch, run_dir, model_dir, "variant=sso", f"data.offline={perturbed}")
    trained_on = records(run_dir, "epoch_0.jsonl")
    assert [r["token_ids"] for r in trained_on] == [r["token_ids"] for r in rows]
    (initial,) = recorder.weights  # the first run's only generation: the starting model
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    stored, fresh = stored_and_fresh(model_with(model_dir, initial), tokenizer, trained_on)
    torch.testing.assert_close(stored, fresh, atol=1e-4, rtol=1e-5)


def test_the_pipeline_runs_without_a_trainer(tmp_path, model_dir):
    """One iteration's data from a plain model, no Lightning: what a scheme gets from the pipeline."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    policy = AutoModelForCausalLM.from_pretrained(model_dir)
    library = PrincipleLibrary(
        features={"order": {"good": "list the digits from small to large", "bad": "list the digits in a random order"}},
        features_per_prompt=(1, 1),
        concision_probability=0.0,
    )
    queries = [f"sort {i} 3 1" for i in range(6)]
    sampling = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=6, batch_size=32)
    steps = IterationPipeline(queries, library, ToyOracle(), sampling, tokenizer, tmp_path)
    keys = ("x|y+", "x|y-", "x+|y+", "x+|y-", "x-|yo", "x-|y+")
    data = steps.run(policy, keys, "epoch_0.jsonl", iteration=0)
    rows = [json.loads(line) for line in (tmp_path / "epoch_0.jsonl").read_text().splitlines()]
    assert len(rows) == len(data.examples) == data.metrics["data/num_examples"] > 0
    assert all(set(r["ref_logps"]) == set(keys) for r in rows)
    assert 0 <= data.metrics["data/pair_accuracy"] <= 1 and data.metrics["data/kept_fraction"] > 0
    assert not policy.training  # left as it was given (from_pretrained: eval mode)


@pytest.mark.parametrize("max_length", [None, 18])
def test_stored_reference_matches_the_first_training_step_with_and_without_a_cut(tmp_path, model_dir, max_length):
    """Before its first update the policy is its own reference (``iteration``), so every pair's
    margin at step 0 is zero, if and only if scoring cut the rows as training cuts them."""
    cut = [f"data.max_length={max_length}"] if max_length else []
    run_dir = run_in_process(tmp_path, model_dir, *RUN, "variant=sso", "data.shuffle=false", *cut)
    rows = records(tmp_path, "epoch_0.jsonl")
    longest = max(
        len(render_prompt(AutoTokenizer.from_pretrained(model_dir), r["instruction"], r["n_system"]))
        + len(r["token_ids"]["chosen"])
        for r in rows
    )
    assert (max_length is None) or longest > max_length  # the cut really cuts
    first = pd.read_csv(run_dir / "metrics.csv").dropna(subset=["train/loss"]).iloc[0]
    for pair in ("policy", "plus", "minus"):
        assert abs(first[f"train/margin_{pair}"]) < 1e-5, pair
