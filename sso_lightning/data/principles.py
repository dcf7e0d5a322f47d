"""Principles: a good and a bad system message per query, built from a feature library.

Per query, 1 to 2 features are chosen and, with ``concision_probability`` (paper: 0.2),
an extra concision pair is added; the chosen principles are joined into one system
message per side. The choice is seeded by the query text, so every iteration of a
run steers a query with the same principles (the paper generates them once).
A model that writes principles (next step) plugs in behind ``for_queries``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sso_lightning.errors import ConfigError


@dataclass(frozen=True)
class PrinciplePair:
    features: tuple[str, ...]
    good: str
    bad: str


@dataclass
class PrincipleLibrary:
    features: Mapping[str, Mapping[str, str]]
    concision: Mapping[str, str] | None = None
    features_per_prompt: Sequence[int] = field(default_factory=lambda: (1, 2))
    concision_probability: float = 0.2
    separator: str = " "
    seed: int = 0

    def __post_init__(self):
        for name, pair in {**self.features, **({"concision": self.concision} if self.concision else {})}.items():
            if set(pair) != {"good", "bad"}:
                raise ConfigError(
                    f"principles.features.{name} must have exactly the keys good and bad (got {sorted(pair)})"
                )
        if len(self.features_per_prompt) != 2:
            raise ConfigError(
                f"principles.features_per_prompt must be [low, high] (got {list(self.features_per_prompt)})"
            )
        low, high = self.features_per_prompt
        if not 1 <= low <= high <= len(self.features):
            raise ConfigError(
                f"principles.features_per_prompt={list(self.features_per_prompt)} must satisfy 1 <= low <= high <= "
                f"{len(self.features)} (the number of features)"
            )
        if not 0 <= self.concision_probability <= 1 or (self.concision_probability > 0 and not self.concision):
            raise ConfigError("principles.concision_probability must be in [0, 1], and > 0 only with a concision pair")

    def for_queries(self, queries: Sequence[str]) -> list[PrinciplePair]:
        return [self.for_query(q) for q in queries]

    def choice(self, query: str) -> tuple[list[str], bool]:
        """The query's features and whether the concision pair joins them (seeded by the query)."""
        digest = hashlib.sha256(f"{self.seed}\0{query}".encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "little"))
        chosen = rng.sample(sorted(self.features), rng.randint(*self.features_per_prompt))
        return chosen, bool(self.concision) and rng.random() < self.concision_probability

    def for_query(self, query: str) -> PrinciplePair:
        chosen, concise = self.choice(query)
        pairs = [self.features[n] for n in chosen]
        if concise:
            chosen.append("concision")
            pairs.append(self.concision)
        return PrinciplePair(
            features=tuple(chosen),
            good=self.separator.join(p["good"] for p in pairs),
            bad=self.separator.join(p["bad"] for p in pairs),
        )
