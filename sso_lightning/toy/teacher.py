"""A scripted teacher for the SFT bootstrap: follows good principles, breaks bad ones,
and is mediocre with no principle, so the plain policy starts below the good one.

Each feature is in one of three states for an answer: ``good`` (the system message
asks for it), ``bad`` (the system message asks for the opposite) or ``plain``
(not mentioned). ``bad_errors`` sets how the bad principle errs:

* ``blatant``: errors the plain policy never makes (shuffled order, half the digits
  dropped, a long preamble) - far from the plain policy's own distribution;
* ``subtle``: more of the same slips the plain policy makes (adjacent swaps, one
  dropped digit, a short preamble) - close to the plain policy's distribution.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sso_lightning.toy.task import FILLER_WORDS, query_digits

FEATURES = ("order", "completeness", "concision")
BAD_ERRORS = ("blatant", "subtle")


@dataclass(frozen=True)
class Teacher:
    plain_swap_prob: float = 0.6
    plain_drop_prob: float = 0.35
    plain_filler_prob: float = 0.35
    bad_errors: str = "blatant"

    def __post_init__(self):
        if self.bad_errors not in BAD_ERRORS:
            raise ValueError(f"bad_errors must be one of {', '.join(BAD_ERRORS)} (got {self.bad_errors!r})")

    def answer(self, query: str, good: tuple[str, ...], bad: tuple[str, ...], rng: random.Random) -> str:
        state = {f: "good" if f in good else "bad" if f in bad else "plain" for f in FEATURES}
        digits = sorted(query_digits(query))
        digits = self._complete(digits, state["completeness"], rng)
        digits = self._order(digits, state["order"], rng)
        return " ".join(self._preamble(state["concision"], rng) + digits)

    def _order(self, digits: list[str], state: str, rng: random.Random) -> list[str]:
        if state == "good":
            return digits
        if state == "bad" and self.bad_errors == "blatant":
            shuffled = digits[:]
            while len(set(digits)) > 1 and shuffled == digits:
                rng.shuffle(shuffled)
            return shuffled
        swaps = (2 + rng.randint(0, 1)) if state == "bad" else int(rng.random() < self.plain_swap_prob)
        for _ in range(swaps):
            i = rng.randrange(len(digits) - 1) if len(digits) > 1 else 0
            if len(digits) > 1:
                digits[i], digits[i + 1] = digits[i + 1], digits[i]
        return digits

    def _complete(self, digits: list[str], state: str, rng: random.Random) -> list[str]:
        if state == "good":
            return digits
        if state == "bad":
            drop = max(1, len(digits) // 2) if self.bad_errors == "blatant" else rng.randint(1, 2)
        else:
            drop = int(rng.random() < self.plain_drop_prob)
        drop = min(drop, len(digits) - 1)
        keep = sorted(rng.sample(range(len(digits)), len(digits) - drop))
        return [digits[i] for i in keep]

    def _preamble(self, state: str, rng: random.Random) -> list[str]:
        if state == "good":
            return []
        if state == "bad":
            n = rng.randint(4, 6) if self.bad_errors == "blatant" else rng.randint(1, 2)
        else:
            n = rng.randint(1, 2) if rng.random() < self.plain_filler_prob else 0
        return [rng.choice(FILLER_WORDS) for _ in range(n)]
