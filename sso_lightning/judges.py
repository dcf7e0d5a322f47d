"""Judges: who says how good an answer is, and so whether y+ beats y-.

A judge scores (query, response) pairs in [0, 1]; pair accuracy and policy quality
are computed from those scores, so a reward model or an LLM judge can replace
the toy oracle without touching the metrics code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sso_lightning.errors import ConfigError
from sso_lightning.generation import Response
from sso_lightning.toy.task import oracle_score


class Judge(Protocol):
    def score(self, queries: Sequence[str], responses: Sequence[Response]) -> list[float]: ...


class ToyOracle:
    """Exact scores for toy-world queries (digit sorting)."""

    def score(self, queries: Sequence[str], responses: Sequence[Response]) -> list[float]:
        if len(queries) != len(responses):
            raise ValueError(f"{len(queries)} queries but {len(responses)} responses")
        try:
            return [oracle_score(q, r.text, r.finished) for q, r in zip(queries, responses)]
        except ValueError as e:
            raise ConfigError(f"judge=toy_oracle scores only toy-world prompts: {e}; choose another judge") from None


def pair_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> float:
    """Share of pairs whose chosen answer scores higher; a tie counts one half."""
    if not chosen:
        return float("nan")
    wins = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected, strict=True))
    return wins / len(chosen)
