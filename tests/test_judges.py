"""Reward-model and LLM judges on tiny random models built offline, saved with
save_pretrained and loaded back through from_pretrained as a hub id would be; the
pairwise fallback; and every conf/judge/*.yaml instantiating without loading a model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from sso_lightning.errors import ConfigError
from sso_lightning.generation import Response
from sso_lightning.judges import (
    PAIRWISE_PROMPT,
    RATING_PROMPT,
    LLMJudge,
    RewardModelJudge,
    pair_accuracy,
    pair_preferences,
)
from sso_lightning.toy.oracle import ToyOracle
from sso_lightning.toy.task import oracle_score
from sso_lightning.toy.tokenizer import build_toy_tokenizer

CONF = Path(__file__).resolve().parents[1] / "conf" / "judge"

QUERIES = ["sort 3 1 2", "sort 5 4", "sort 9 7 8 6", "sort 2 0 1", "sort 4 3"]
GOOD = ["1 2 3", "4 5", "6 7 8 9", "0 1 2", "3 4"]
BAD = ["3 1 2", "5 4 please", "9 8 7 6 ok", "2 1", "sure 4 3 here it is"]


def resp(text: str, finished: bool = True) -> Response:
    return Response(ids=(), text=text, finished=finished)


def tokenizer():
    texts = QUERIES + GOOD + BAD + [PAIRWISE_PROMPT, RATING_PROMPT, "A B Answer: " + " ".join(map(str, range(10)))]
    return build_toy_tokenizer(texts)


def tiny_config(tok) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory) -> str:
    torch.manual_seed(0)
    tok = tokenizer()
    config = tiny_config(tok)
    config.num_labels = 1
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():  # a visible spread of rewards
        model.score.weight.mul_(20.0)
    path = tmp_path_factory.mktemp("reward")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory) -> str:
    torch.manual_seed(1)
    tok = tokenizer()
    model = LlamaForCausalLM(tiny_config(tok))
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    path = tmp_path_factory.mktemp("llm")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


# --------------------------------------------------------------------------------------------
# RewardModelJudge
# --------------------------------------------------------------------------------------------


def test_reward_model_scores_in_unit_interval_deterministic_and_batch_invariant(reward_dir):
    responses = [resp(t) for t in GOOD]
    judge = RewardModelJudge(reward_dir, batch_size=4, dtype="float32")
    scores = judge.score(QUERIES, responses)
    assert len(scores) == len(QUERIES)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert len({round(s, 6) for s in scores}) > 1  # not a constant
    again = RewardModelJudge(reward_dir, batch_size=4, dtype="float32").score(QUERIES, responses)
    assert again == scores
    for batch_size in (1, 2, 16):
        other = RewardModelJudge(reward_dir, batch_size=batch_size, dtype="float32").score(QUERIES, responses)
        assert other == pytest.approx(scores, abs=1e-5)


def test_reward_model_score_is_sigmoid_of_reward_and_unfinished_is_minimum(reward_dir):
    judge = RewardModelJudge(reward_dir, dtype="float32")
    rewards = judge.rewards(QUERIES, GOOD)
    scores = judge.score(QUERIES, [resp(t) for t in GOOD])
    assert scores == pytest.approx([1 / (1 + math.exp(-r)) for r in rewards], abs=1e-6)
    mixed = judge.score(QUERIES, [resp(t, finished=i % 2 == 0) for i, t in enumerate(GOOD)])
    for i, s in enumerate(mixed):
        assert s == (pytest.approx(scores[i], abs=1e-5) if i % 2 == 0 else 0.0)
    assert all(s >= 0.0 for s in scores)


def test_reward_model_is_loaded_lazily_and_missing_model_is_one_line_config_error(tmp_path):
    judge = RewardModelJudge(str(tmp_path / "no-such-model"))
    assert judge._model is None  # construction reads nothing
    with pytest.raises(ConfigError) as info:
        judge.score(["q"], [resp("a")])
    message = str(info.value)
    assert message.startswith(f"judge.name_or_path={tmp_path / 'no-such-model'}: could not be loaded (")
    assert "\n" not in message


# --------------------------------------------------------------------------------------------
# LLMJudge
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["probability", "vote"])
def test_llm_prefer_is_symmetric_under_order_swap(llm_dir, mode):
    judge = LLMJudge(llm_dir, batch_size=3, dtype="float32", mode=mode)
    a, b = [resp(t) for t in GOOD], [resp(t) for t in BAD]
    ab, ba = judge.prefer(QUERIES, a, b), judge.prefer(QUERIES, b, a)
    assert all(0.0 <= p <= 1.0 for p in ab + ba)
    assert [x + y for x, y in zip(ab, ba)] == pytest.approx([1.0] * len(QUERIES), abs=1e-5)
    if mode == "vote":
        assert set(ab) <= {0.0, 0.5, 1.0}
    else:  # the random model has opinions beyond its position bias, so symmetry is not trivial
        assert max(abs(p - 0.5) for p in ab) > 5e-5
    assert judge.prefer(QUERIES, a, a) == pytest.approx([0.5] * len(QUERIES), abs=1e-5)
    other = LLMJudge(llm_dir, batch_size=16, dtype="float32", mode=mode).prefer(QUERIES, a, b)
    assert other == pytest.approx(ab, abs=1e-5)


def test_llm_prefer_unfinished_loses_and_pair_preferences_uses_prefer(llm_dir):
    judge = LLMJudge(llm_dir, dtype="float32")
    q = QUERIES[:3]
    chosen = [resp("1 2 3"), resp("4 5", finished=False), resp("6 7", finished=False)]
    rejected = [resp("3 1 2", finished=False), resp("5 4"), resp("7 6", finished=False)]
    assert judge.prefer(q, chosen, rejected) == [1.0, 0.0, 0.5]
    a, b = [resp(t) for t in GOOD], [resp(t) for t in BAD]
    assert pair_preferences(judge, QUERIES, a, b) == judge.prefer(QUERIES, a, b)


def test_llm_score_in_unit_interval_deterministic_unfinished_minimum(llm_dir):
    judge = LLMJudge(llm_dir, batch_size=2, dtype="float32")
    responses = [resp(t) for t in GOOD]
    scores = judge.score(QUERIES, responses)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert judge.score(QUERIES, responses) == scores
    assert LLMJudge(llm_dir, batch_size=16, dtype="float32").score(QUERIES, responses) == pytest.approx(
        scores, abs=1e-5
    )
    mixed = judge.score(QUERIES, [resp(t, finished=i != 1) for i, t in enumerate(GOOD)])
    assert mixed[1] == 0.0 and mixed[0] == pytest.approx(scores[0], abs=1e-5)


def test_llm_judge_missing_model_is_one_line_config_error(tmp_path):
    judge = LLMJudge(str(tmp_path / "absent"))
    with pytest.raises(ConfigError) as info:
        judge.prefer(["q"], [resp("a")], [resp("b")])
    assert str(info.value).startswith("judge.name_or_path=") and "\n" not in str(info.value)
    with pytest.raises(ConfigError):
        LLMJudge(str(tmp_path / "absent"), mode="best-of")


# --------------------------------------------------------------------------------------------
# pair_preferences fallback and configs
# --------------------------------------------------------------------------------------------


def test_pair_preferences_falls_back_to_score_comparison_for_toy_oracle():
    queries = ["sort 3 1 2", "sort 5 4", "sort 2 1", "sort 7 8", "sort 1 2"]
    chosen = [resp("1 2 3"), resp("5 4"), resp("1 2", finished=False), resp("7 8"), resp("1 2 well")]
    rejected = [resp("3 1 2"), resp("4 5"), resp("2 1", finished=False), resp("7 8"), resp("1 2")]
    judge = ToyOracle()
    c = [oracle_score(q, r.text, r.finished) for q, r in zip(queries, chosen)]
    r = [oracle_score(q, x.text, x.finished) for q, x in zip(queries, rejected)]
    expected = [1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(c, r)]
    assert expected == [1.0, 0.0, 0.5, 0.5, 0.0]  # the cases above cover win, loss and ties
    prefs = pair_preferences(judge, queries, chosen, rejected)
    assert prefs == expected
    assert sum(prefs) / len(prefs) == pair_accuracy(c, r)
    assert pair_preferences(judge, queries, chosen, rejected, chosen_scores=c, rejected_scores=r) == expected


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_judge_config_instantiates_without_loading_a_model(path, tmp_path):
    cfg = OmegaConf.load(path)
    for key in list(cfg.keys()):
        if OmegaConf.is_missing(cfg, key):
            cfg[key] = str(tmp_path / "not-loaded")
    judge = instantiate(cfg)
    assert callable(getattr(judge, "score", None))
    assert getattr(judge, "_model", None) is None
