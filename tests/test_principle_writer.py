"""Model-written principles: the two-step procedure, parsing, fallbacks, caching."""

from __future__ import annotations

import pytest
import torch
from conftest import ROOT, TINY
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM

from sso_lightning.data.principle_writer import GeneratedPrinciples
from sso_lightning.data.principles import PrincipleLibrary
from sso_lightning.errors import ConfigError
from sso_lightning.toy.tokenizer import build_toy_tokenizer

FEATURES = {
    "safety": {"good": "be safe", "bad": "be reckless"},
    "accuracy": {"good": "be exact", "bad": "make things up"},
    "engagement": {"good": "be warm", "bad": "be cold"},
}


def library(concision_probability=0.0):
    return PrincipleLibrary(
        features=FEATURES,
        concision={"good": "be brief", "bad": "ramble"},
        concision_probability=concision_probability,
        separator="\n",
    )


class Scripted(GeneratedPrinciples):
    """A writer whose model replies are scripted by prompt content."""

    def __init__(self, replies, **kwargs):
        super().__init__(library(**kwargs))
        self.replies, self.prompts = replies, []

    def complete(self, prompts):
        self.prompts += prompts
        return [self.replies(p) for p in prompts]


def reply(prompt):
    if "Which 2" in prompt:
        return "Accuracy, and also Safety." if "tax" in prompt else "no idea"
    if "about Accuracy" in prompt:
        return 'Sure! {"good": "cite sources", "bad": "invent numbers"} hope it helps'
    return "not json at all"


def test_two_steps_parse_and_fall_back():
    writer = Scripted(reply)
    pair = writer.for_queries(["how do taxes work"])[0]
    assert pair.features == ("accuracy", "safety")  # order of mention in the reply
    assert pair.good == "cite sources\nbe safe" and pair.bad == "invent numbers\nbe reckless"
    assert writer.stats == {"features_parsed": 1, "principles_parsed": 1, "principles_fallback": 1}

    other = writer.for_queries(["say hi"])[0]  # step 1 names no feature: the library's seeded choice
    chosen, _ = library().choice("say hi")
    assert other.features == tuple(chosen)
    assert writer.stats["features_fallback"] == 1
    parsed, fallback = writer.stats["principles_parsed"], writer.stats["principles_fallback"]
    assert parsed + fallback == 2 + len(chosen)
    assert writer.metrics() == {
        "data/features_fallback_fraction": 0.5,
        "data/principles_fallback_fraction": fallback / (parsed + fallback),
    }


def test_principles_are_cached_per_query():
    writer = Scripted(reply)
    first = writer.for_queries(["how do taxes work", "how do taxes work"])
    asked = len(writer.prompts)
    again = writer.for_queries(["how do taxes work"])
    assert len(writer.prompts) == asked == 3 and first[0] == first[1] == again[0]


def test_concision_pair_joins_as_the_library_draws_it():
    writer = Scripted(reply, concision_probability=1.0)
    pair = writer.for_queries(["how do taxes work"])[0]
    assert pair.features[-1] == "concision" and pair.good.endswith("be brief") and pair.bad.endswith("ramble")


def test_policy_as_principle_model_runs_and_falls_back_on_gibberish():
    tokenizer = build_toy_tokenizer(["sort 1 2 3 which of these qualities"])
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    writer = GeneratedPrinciples(library(), max_new_tokens=8)
    with pytest.raises(RuntimeError, match="no policy was bound"):
        writer.for_queries(["sort 1 2"])
    writer.bind(model, tokenizer)
    pairs = writer.for_queries(["sort 1 2", "sort 3 1"])
    assert all(p.features and p.good and p.bad for p in pairs)
    assert writer.stats["features_fallback"] + writer.stats["features_parsed"] == 2


def test_generated_config_builds_without_loading_a_model():
    cfg = OmegaConf.load(ROOT / "conf" / "principles" / "generated.yaml")
    paper = OmegaConf.load(ROOT / "conf" / "principles" / "paper.yaml")
    cfg = OmegaConf.merge({k: v for k, v in cfg.items() if k != "defaults"}, {"library": paper})
    writer = instantiate(cfg)
    assert isinstance(writer, GeneratedPrinciples) and writer.model is None and len(writer.library.features) == 7


def test_toy_model_rejects_generated_principles(cli, tmp_path):
    result = cli(*TINY, "principles=generated", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "model=toy needs a principle library" in result.stderr


def test_a_missing_principle_model_is_reported_under_its_own_option(tmp_path):
    writer = GeneratedPrinciples(library(), model=str(tmp_path / "no-such-model"))
    with pytest.raises(ConfigError, match=r"^principles\.model=.*no-such-model: no such directory"):
        writer.for_queries(["sort 1 2"])
