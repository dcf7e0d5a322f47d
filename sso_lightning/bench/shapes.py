"""The model shapes the bench can build (``bench.shape``) and its synthetic steered data.

A shape is a Llama config and a tokenizer made from nothing (no download). The model gets random
weights and is saved with the tokenizer into a directory, which the project's model config then
loads, so every ``model.*`` option applies to our side. Speed depends on shapes and lengths, not on
what the tokens say, so the data are random token ids of seeded, realistic lengths.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM

from sso_lightning.__main__ import CONFIG_DIR
from sso_lightning.data.principles import PrinciplePair
from sso_lightning.data.snapshot import SteeredExample
from sso_lightning.data.steering import steer
from sso_lightning.generation import Response
from sso_lightning.sequences import RESPONSE_KEYS, SEQUENCE_KEYS, split_key
from sso_lightning.toy.bootstrap import ToyPolicy
from sso_lightning.toy.tokenizer import build_toy_tokenizer


@dataclass(frozen=True)
class Lengths:
    """Token counts, each drawn uniformly from its (low, high) per example: a principle (the system
    message of x+ and x-), the query, and each response (EOS included); and the generation row's
    answer length."""

    principle: tuple[int, int]
    query: tuple[int, int]
    response: tuple[int, int]
    max_new_tokens: int


@dataclass(frozen=True)
class Shape:
    """A model and the lengths and step counts it is benchmarked with by default."""

    name: str
    model: Callable[[], tuple[LlamaConfig, object]]  # -> (config, tokenizer); top-level, so it pickles
    lengths: Lengths
    batch_size: int
    warmup: int
    steps: int


def toy_model() -> tuple[LlamaConfig, object]:
    """The toy world's own shape and word-level tokenizer (conf/model/toy.yaml, conf/principles/toy.yaml)."""
    principles = instantiate(OmegaConf.load(Path(CONFIG_DIR) / "principles" / "toy.yaml"))
    toy = ToyPolicy(principles=principles)
    tokenizer = build_toy_tokenizer(toy.vocabulary())
    return toy.model_config(tokenizer), tokenizer


def word_tokenizer(size: int):
    """A word-level tokenizer of exactly ``size`` ids, with the toy chat template, EOS and padding."""
    specials = len(build_toy_tokenizer([]))
    return build_toy_tokenizer([" ".join(f"w{i}" for i in range(size - specials))])


def llama(tokenizer, **dims) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        **dims,
    )


def mid_model() -> tuple[LlamaConfig, object]:
    """About 31M parameters with a 32k vocabulary: big enough that the head and padding matter,
    small enough for a CPU."""
    tokenizer = word_tokenizer(32_000)
    dims = dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=6)
    return llama(tokenizer, num_key_value_heads=2, max_position_embeddings=2048, **dims), tokenizer


def llama3_8b_model() -> tuple[LlamaConfig, object]:
    """Llama-3-8B's shape (its config.json's dimensions), with a word-level tokenizer of its vocabulary size."""
    tokenizer = word_tokenizer(128_256)
    dims = dict(hidden_size=4096, intermediate_size=14_336, num_hidden_layers=32, num_attention_heads=32)
    return llama(
        tokenizer, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500_000.0, **dims
    ), tokenizer


# x = query + 3 template tokens; x+ and x- = principle + query + 5: toy prompts of 8-27 tokens, mid's x
# of 43-103 and x+/x- of 145-255 tokens; responses spread widely, so a padded batch wastes a lot.
TOY_LENGTHS = Lengths(principle=(5, 14), query=(5, 8), response=(4, 25), max_new_tokens=24)
MID_LENGTHS = Lengths(principle=(100, 150), query=(40, 100), response=(30, 400), max_new_tokens=64)
SHAPES = {
    "toy": Shape("toy", toy_model, TOY_LENGTHS, batch_size=16, warmup=10, steps=10),
    "mid": Shape("mid", mid_model, MID_LENGTHS, batch_size=2, warmup=3, steps=3),
    "llama3_8b": Shape("llama3_8b", llama3_8b_model, MID_LENGTHS, batch_size=1, warmup=3, steps=3),
}


def save_random_model(config: LlamaConfig, tokenizer, path: Path, seed: int) -> None:
    """A random-weight Llama and its tokenizer, saved as a downloaded model would be."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def synthetic_examples(tokenizer, lengths: Lengths, count: int, seed: int) -> list[SteeredExample]:
    """``count`` steered examples: principles and query are random words of the vocabulary,
    rendered into x, x+ and x- by the tokenizer's chat template (exact lengths for a word-level
    tokenizer, about them for others); responses are random ids closed by EOS; the stored
    reference log-probs are random too (about -0.5 to -3 per token)."""
    rng = random.Random(seed)
    special = set(tokenizer.all_special_ids)
    words = [i for i in range(len(tokenizer)) if i not in special]

    def text(span: tuple[int, int]) -> str:
        return tokenizer.decode([rng.choice(words) for _ in range(rng.randint(*span))])

    def response() -> Response:
        ids = [rng.choice(words) for _ in range(rng.randint(*lengths.response) - 1)]
        return Response(ids=(*ids, tokenizer.eos_token_id), text="", finished=True)

    examples = []
    for _ in range(count):
        principles = PrinciplePair(("synthetic",), text(lengths.principle), text(lengths.principle))
        prompt = steer(tokenizer, text(lengths.query), principles)
        responses = {key: response() for key in RESPONSE_KEYS}
        ref = {key: -rng.uniform(0.5, 3.0) * len(responses[split_key(key)[1]].ids) for key in SEQUENCE_KEYS}
        examples.append(SteeredExample(prompt, responses, ref_logps=ref))
    return examples
