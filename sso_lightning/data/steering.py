"""Steered prompts: the query x alone, and with the good (x+) or bad (x-) principle
as the system message, rendered with the tokenizer's own chat template."""

from __future__ import annotations

from dataclasses import dataclass

from sso_lightning.data.principles import PrinciplePair

PROMPT_KEYS = ("x", "x+", "x-")


@dataclass(frozen=True)
class SteeredPrompt:
    query: str
    principles: PrinciplePair
    ids: dict[str, list[int]]  # "x", "x+", "x-": prompt token ids ending with the assistant header


def render_prompt(tokenizer, query: str, system: str | None = None) -> list[int]:
    """Token ids of a one-turn conversation, ready for the assistant's answer."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": query}]
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(encoded["input_ids"])


def steer(tokenizer, query: str, principles: PrinciplePair) -> SteeredPrompt:
    return SteeredPrompt(
        query=query,
        principles=principles,
        ids={
            "x": render_prompt(tokenizer, query),
            "x+": render_prompt(tokenizer, query, principles.good),
            "x-": render_prompt(tokenizer, query, principles.bad),
        },
    )
