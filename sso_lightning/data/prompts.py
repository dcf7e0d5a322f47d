"""Prompt sources: where the queries x come from, validated before anything runs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sso_lightning.errors import ConfigError


@dataclass(frozen=True)
class PromptSet:
    train: list[str]
    eval: list[str]


@dataclass
class JsonlPrompts:
    """Queries from a JSON-lines file, one object per line; ``field`` names the query.

    The last ``num_eval`` records (after ``limit``) are held out for ``eval/quality``.
    """

    path: str
    field: str = "prompt"
    num_eval: int = 64
    limit: int | None = None

    def load(self) -> PromptSet:
        queries = read_jsonl_field(Path(self.path), self.field)
        if self.limit is not None:
            queries = queries[: self.limit]
        if len(queries) <= self.num_eval:
            raise ConfigError(
                f"{self.path}: {len(queries)} prompts, but data.prompts.num_eval={self.num_eval} are held out; "
                "add prompts or lower num_eval"
            )
        split = len(queries) - self.num_eval
        return PromptSet(train=queries[:split], eval=queries[split:])


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) for every non-blank line; a missing file or a bad line is a
    ConfigError naming it."""
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise ConfigError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            records.append((lineno, record))
    if not records:
        raise ConfigError(f"{path}: no records")
    return records


def read_jsonl_field(path: Path, field: str) -> list[str]:
    """One non-empty string field from every record."""
    values = []
    for lineno, record in read_jsonl(path):
        value = record.get(field)
        if not isinstance(value, str) or not value.strip():
            keys = ", ".join(repr(k)[1:-1] for k in sorted(record)) or "none"  # repr: one line, always
            raise ConfigError(
                f"{path}:{lineno}: record has no non-empty string field '{field}' (its fields: {keys}); "
                "set data.prompts.field"
            )
        values.append(value)
    return values
