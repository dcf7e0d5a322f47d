"""The names SSO gives its prompts, responses and (prompt, response) sequences.

Prompts: the plain query ``x``, and ``x+`` / ``x-`` with the good / bad principle as
system message. Responses: ``y+`` sampled from x+, ``y-`` from x-, ``yo`` from x. A
sequence key such as ``x+|y-`` names the response y- read after the prompt x+.
"""

from __future__ import annotations

PROMPT_KEYS = ("x", "x+", "x-")
RESPONSE_KEYS = ("y+", "y-", "yo")
RESPONSE_PROMPTS = {"y+": "x+", "y-": "x-", "yo": "x"}  # each response and the prompt it is sampled from
SEQUENCE_KEYS = ("x|y+", "x|y-", "x+|y+", "x+|y-", "x-|yo", "x-|y+", "x-|y-")
PLAIN_KEYS = ("x|y+", "x|y-")  # y+ and y- after the plain query: how on-policy the pair is, and W


def split_key(key: str) -> tuple[str, str]:
    """``"x+|y-"`` -> ``("x+", "y-")``."""
    prompt, response = key.split("|")
    return prompt, response
