"""The toy world's judge: exact scores for digit-sorting queries (``judge=toy_oracle``)."""

from __future__ import annotations

from collections.abc import Sequence

from sso_lightning.errors import ConfigError
from sso_lightning.generation import Response
from sso_lightning.judges import check_lengths
from sso_lightning.toy.task import oracle_score


class ToyOracle:
    def score(self, queries: Sequence[str], responses: Sequence[Response]) -> list[float]:
        check_lengths(queries, responses)
        try:
            return [oracle_score(q, r.text, r.finished) for q, r in zip(queries, responses)]
        except ValueError as e:
            raise ConfigError(f"judge=toy_oracle scores only toy-world prompts: {e}; choose another judge") from None
