"""SPO: degree variants (labels, order, never empty, seeded), the head's loss by hand,
gradients into both the head and the policy, and tiny end-to-end runs for DPO and SSO."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from conftest import TINY, steered_world
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from sso_lightning.auxiliary.spo import SPO, degree_loss
from sso_lightning.data.batching import Collator
from sso_lightning.data.degrees import DegreeVariants, rake_items, remove_spans
from sso_lightning.errors import ConfigError
from sso_lightning.forward import training_forward
from sso_lightning.losses import DPO, SSOObjective
from sso_lightning.module import SSOModule

TEXT = "Paris is the capital of France. The Eiffel Tower, built in 1889, is its most visited monument."


def test_rake_ranks_multiword_phrases_first_and_finds_every_occurrence():
    text = TEXT + " I saw the Eiffel tower twice."
    items = rake_items(text)
    phrases = [text[start:end].lower() for start, end in (spans[0] for spans in items)]
    assert phrases[:2] == ["eiffel tower", "visited monument"]  # RAKE score 4 (two-word phrases) beats 1
    assert len(items[0]) == 2  # "Eiffel Tower" and "Eiffel tower"


def test_remove_spans_closes_up_whitespace():
    assert remove_spans("a bb c dd e", [(2, 4), (7, 9)]) == "a c e"
    assert remove_spans("x y\n z w", [(0, 1), (7, 8)]) == "y\nz"


def test_count_variants_remove_one_more_phrase_per_degree():
    variants = DegreeVariants(num_degrees=3)(TEXT)
    assert [label for _, label in variants] == [0, 1, 2, 3]
    assert variants[0][0] == TEXT
    assert "Eiffel Tower" not in variants[1][0] and "visited monument" in variants[1][0]
    assert "visited monument" not in variants[2][0]
    lengths = [len(text) for text, _ in variants]
    assert lengths == sorted(lengths, reverse=True) and len(set(lengths)) == 4


def test_toy_variants_remove_digits_exactly_and_never_empty():
    variants = DegreeVariants(num_degrees=3, extractor="toy", seed=0)("well 3 1 4 1")
    assert [label for _, label in variants] == [0, 1, 2, 3]
    for text, label in variants:
        assert len([w for w in text.split() if w.isdigit()]) == 4 - label and text.startswith("well")
    # fewer digits than degrees: no variant removes everything, labels stay the count removed
    short = DegreeVariants(num_degrees=3, extractor="toy")("5 2")
    assert [label for _, label in short] == [0, 1] and all(text for text, _ in short)


def test_share_variants_remove_a_share_and_skip_repeats():
    variants = DegreeVariants(num_degrees=4, unit="share", extractor="toy")("1 2 3 4 5 6")
    removed = {label: 6 - len(text.split()) for text, label in variants}
    assert removed == {0: 0, 1: 2, 2: 3, 3: 4}  # round(k/4 * 6); k = 4 would leave nothing
    tiny = DegreeVariants(num_degrees=4, unit="share", extractor="toy")("1 2 3")
    assert [label for _, label in tiny] == [0, 1, 2]  # shares 0, 1, 2 of 3 digits; k=3 rounds to 2 again


def test_variants_are_deterministic_with_a_seed():
    text = "sorted 9 8 7 6 5 4 3"
    make = lambda seed: DegreeVariants(num_degrees=3, extractor="toy", seed=seed)(text)
    assert make(1) == make(1)
    assert any(make(1) != make(seed) for seed in range(2, 8))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_degrees": 0}, "loss.aux.num_degrees must be >= 1"),
        ({"unit": "half"}, "loss.aux.unit=half is not valid (valid: count, share)"),
        ({"extractor": "yake"}, "loss.aux.extractor=yake is not valid (valid: rake, toy)"),
        ({"responses": "all"}, "loss.aux.responses=all is not valid (valid: chosen, rejected, both)"),
        ({"weight": -1.0}, "loss.aux.weight must be >= 0"),
    ],
)
def test_bad_settings_fail_with_the_option_named(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SPO(**kwargs)


def test_degree_loss_matches_a_hand_computation():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    labels = torch.tensor([0, 1])
    by_hand = []
    for row, label in zip(logits.tolist(), labels.tolist()):
        by_hand.append(-(row[label] - math.log(sum(math.exp(v) for v in row))))
    loss, metrics = degree_loss(logits, labels)
    assert loss.item() == metrics["loss_degree"].item() == pytest.approx(sum(by_hand) / 2, rel=1e-6)
    assert metrics["degree_acc"].item() == 0.5  # row 0 right (argmax 0), row 1 wrong (argmax 2)


@pytest.fixture(scope="module")
def world():
    return steered_world(6, query_digits=(3, 6), answer_digits=(3, 6))


def module_and_batch(world, aux, responses="chosen", packing=False):
    tokenizer, config, examples = world
    spo = SPO(weight=0.5, extractor="toy", responses=responses) if aux else None
    objective = SSOObjective(DPO(0.1), aux=spo)
    torch.manual_seed(0)
    policy = LlamaForCausalLM(config)
    forward = training_forward(policy, packing=packing)
    module = SSOModule(policy, tokenizer, objective, lambda params: None, forward=forward)
    module.log_dict = lambda *a, **k: None
    rows = spo.rows(tokenizer) if aux else None
    return module, Collator(module.keys, tokenizer.pad_token_id, rows)(examples)


@pytest.mark.parametrize("responses, per_response", [("chosen", 1), ("both", 2)])
def test_degree_rows_follow_the_preference_rows_in_one_batch(world, responses, per_response):
    module, batch = module_and_batch(world, "spo", responses)
    preference_rows = len(module.keys) * len(world[2])
    labels = batch["aux_labels"].tolist()
    assert batch["input_ids"].shape[0] == preference_rows + len(labels)
    assert labels.count(0) == per_response * len(world[2])  # every response keeps its degree-0 variant
    assert max(labels) == 3


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_spo_loss_is_the_preference_loss_plus_lambda_times_the_degree_loss_and_trains_both(world, packing):
    plain, plain_batch = module_and_batch(world, None)
    module, batch = module_and_batch(world, "spo", packing=packing)
    calls = []
    module.policy.get_decoder().register_forward_hook(lambda *_: calls.append(1))
    loss = module.training_step(batch, 0)
    assert len(calls) == 1  # the variants ride in the same forward as the preference sequences

    # the degree loss by hand: the variant rows alone, mean of the last hidden state over response tokens
    rows = len(module.keys) * len(world[2])
    with torch.no_grad():
        hidden = module.policy(
            input_ids=batch["input_ids"][rows:],
            attention_mask=batch["attention_mask"][rows:],
            output_hidden_states=True,
        ).hidden_states[-1]
        mask = batch["response_mask"][rows:]
        pooled = torch.stack([hidden[i][mask[i]].mean(0) for i in range(len(mask))])
        degree = torch.nn.functional.cross_entropy(module.aux_head(pooled), batch["aux_labels"])
        preference = plain.training_step(plain_batch, 0)
    torch.testing.assert_close(loss.detach(), preference + 0.5 * degree, atol=1e-5, rtol=1e-5)

    loss.backward()
    assert module.aux_head.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.policy.model.layers[-1].parameters())
    state = module.state_dict()  # what a Lightning checkpoint saves: the head is in it
    assert sorted(k for k in state if not k.startswith("policy.")) == ["aux_head.bias", "aux_head.weight"]


RUN = [*TINY, "trainer.max_epochs=1", "data.prompts.num_train=16", "data.prompts.num_eval=8", "loss/aux=spo"]


@pytest.mark.parametrize(
    "variant, prefixes", [("pbaa", ["train"]), ("sso", ["train"]), ("sso_two_stage", ["generator", "train"])]
)
def test_spo_runs_end_to_end_and_the_head_stays_out_of_the_exported_policy(cli, tmp_path, variant, prefixes):
    run_dir = tmp_path / "run"
    result = cli(*RUN, f"variant={variant}", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(run_dir / "epochs.csv", index_col="epoch")
    for prefix in prefixes:
        assert 0 <= table.loc[0, f"{prefix}/degree_acc"] <= 1 and table.loc[0, f"{prefix}/loss_degree"] > 0
    weights = load_file(run_dir / "policy" / "model.safetensors")
    assert weights and not any("degree" in name for name in weights)


def test_unknown_aux_loss_is_one_line(cli, tmp_path):
    result = cli(*TINY, "loss/aux=dpo", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: loss/aux=dpo: no such config (valid: spo)"
