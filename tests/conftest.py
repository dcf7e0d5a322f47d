"""Shared settings: a tiny, fast toy world so end-to-end runs take seconds."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sso_lightning.data.principles import PrinciplePair
from sso_lightning.data.snapshot import SteeredExample
from sso_lightning.data.steering import steer
from sso_lightning.generation import Response
from sso_lightning.sequences import SEQUENCE_KEYS
from sso_lightning.toy.task import DIGITS, FILLER_WORDS, QUERY_WORD
from sso_lightning.toy.tokenizer import build_toy_tokenizer

ROOT = Path(__file__).resolve().parent.parent

# A reduced budget for the default config: smaller bootstrap, 2 iterations ...
TINY_RUN = ["logger=csv", "model.sft.num_examples=1500", "model.sft.epochs=2", "trainer.max_epochs=2"]
# ... and fewer toy prompts.
TINY = [*TINY_RUN, "data.prompts.num_train=48", "data.prompts.num_eval=24"]


def pytest_collection_modifyitems(items):
    """Every test that runs the command line in a subprocess (the ``cli`` fixture) is ``slow``."""
    for item in items:
        if "cli" in item.fixturenames:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def cli(cache_dir):
    """Run ``python -m sso_lightning`` like a user does; returns the CompletedProcess."""

    def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "SSO_LIGHTNING_CACHE": str(cache_dir), "WANDB_MODE": "offline"}
        return subprocess.run(
            [sys.executable, "-m", "sso_lightning", *args],
            cwd=cwd or ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    return run


def tiny_llama_config(tokenizer, max_positions: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def steered_world(num_examples: int, query_digits: tuple[int, int], answer_digits: tuple[int, int]):
    """A toy tokenizer, a tiny Llama config and seeded steered examples with random digit
    answers and random stored reference log-probs: (tokenizer, config, examples)."""
    tokenizer = build_toy_tokenizer(["sort give only the digits talk a lot", *map(str, range(10))])
    torch.manual_seed(0)
    config = tiny_llama_config(tokenizer, max_positions=64)
    rng = random.Random(0)
    examples = []
    for _ in range(num_examples):
        query = "sort " + " ".join(str(rng.randrange(10)) for _ in range(rng.randint(*query_digits)))
        prompt = steer(tokenizer, query, PrinciplePair(("concision",), "give only the digits", "talk a lot"))

        def answer():
            words = [str(rng.randrange(10)) for _ in range(rng.randint(*answer_digits))]
            return Response(
                tuple(tokenizer.convert_tokens_to_ids(words)) + (tokenizer.eos_token_id,), " ".join(words), True
            )

        examples.append(
            SteeredExample(
                prompt,
                {"y+": answer(), "y-": answer(), "yo": answer()},
                ref_logps={k: -rng.uniform(2, 20) for k in SEQUENCE_KEYS},
            )
        )
    return tokenizer, config, examples


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama and a toy tokenizer, saved like a downloaded model."""
    path = tmp_path_factory.mktemp("tiny-llama")
    principles = (
        "list the digits from small to large in a random order keep every of question "
        "leave out some give only talk lot before"
    )
    tokenizer = build_toy_tokenizer([QUERY_WORD, *DIGITS, *FILLER_WORDS, principles])
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(tokenizer, max_positions=128)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def run_in_process(tmp_path: Path, model_dir: Path, *overrides: str) -> Path:
    """One run of the tiny saved Llama in this process (so a test can patch and record inside
    it), quiet, with its outputs under ``tmp_path``; returns the run directory."""
    from hydra import compose, initialize_config_dir

    from sso_lightning.__main__ import CONFIG_DIR
    from sso_lightning.train import run

    base = [o for o in TINY if not o.startswith("model.")]
    quiet = [f"trainer.default_root_dir={tmp_path}", "+trainer.enable_progress_bar=false"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            config_name="config", overrides=[*base, "model=hf", f"model.name_or_path={model_dir}", *quiet, *overrides]
        )
    return run(cfg, tmp_path / "run")
