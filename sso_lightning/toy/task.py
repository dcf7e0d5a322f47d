"""Digit sorting: a task whose answers an oracle scores exactly, with no model.

A query is ``sort 3 1 4 1 5``; the ideal answer is ``1 1 3 4 5``. Quality is the
product of three checks in [0, 1], one per principle feature, so a principle that
governs one feature changes the score in a way that can be read off:

* order:        1 - inversions / n (n = digits in the answer)
* completeness: multiset overlap with the query's digits / max(answer, query) length
* concision:    1 - filler words / 4

An answer the model did not finish (no end-of-turn token) scores 0.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from sso_lightning.data.prompts import PromptSet, check_sizes
from sso_lightning.errors import ConfigError

DIGITS = tuple(str(d) for d in range(10))
FILLER_WORDS = ("well", "ok", "so", "hmm", "the", "answer", "is", "here", "now")
QUERY_WORD = "sort"


def query_digits(query: str) -> list[str]:
    """The digits a toy query asks to sort; rejects anything that is not a toy query."""
    words = query.split()
    if len(words) < 2 or words[0] != QUERY_WORD or not all(w in DIGITS for w in words[1:]):
        raise ValueError(f"not a toy-world query (expected 'sort <digits>'): {query!r}")
    return words[1:]


def _inversions(digits: list[str]) -> int:
    return sum(1 for i in range(len(digits)) for j in range(i + 1, len(digits)) if digits[i] > digits[j])


def feature_scores(query: str, answer: str) -> dict[str, float]:
    """Per-feature quality of a finished answer (see module docstring)."""
    wanted = query_digits(query)
    words = answer.split()
    digits = [w for w in words if w in DIGITS]
    others = len(words) - len(digits)
    if not digits:
        return {"order": 0.0, "completeness": 0.0, "concision": max(0.0, 1 - others / 4)}
    overlap = sum((Counter(digits) & Counter(wanted)).values())
    return {
        "order": max(0.0, 1 - _inversions(digits) / len(digits)),
        "completeness": overlap / max(len(digits), len(wanted)),
        "concision": max(0.0, 1 - others / 4),
    }


def oracle_score(query: str, answer: str, finished: bool) -> float:
    """Quality in [0, 1]; unfinished or empty answers score 0."""
    if not finished or not answer.strip():
        return 0.0
    scores = feature_scores(query, answer)
    return scores["order"] * scores["completeness"] * scores["concision"]


@dataclass
class ToyPrompts:
    """Seeded random sorting queries: a training set and a disjoint-by-seed held-out set."""

    num_train: int = 512
    num_eval: int = 128
    min_digits: int = 4
    max_digits: int = 7
    seed: int = 1234

    def __post_init__(self):
        if self.num_train < 1:
            raise ConfigError(f"data.prompts.num_train={self.num_train}: need at least 1 training prompt")
        check_sizes(self.num_eval, limit=None)

    def load(self) -> PromptSet:
        rng = random.Random(self.seed)
        return PromptSet(train=self._sample(rng, self.num_train), eval=self._sample(rng, self.num_eval))

    def _sample(self, rng: random.Random, n: int) -> list[str]:
        queries = []
        for _ in range(n):
            k = rng.randint(self.min_digits, self.max_digits)
            queries.append(" ".join([QUERY_WORD] + [rng.choice(DIGITS) for _ in range(k)]))
        return queries
