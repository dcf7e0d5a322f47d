"""Dropping degenerate examples, as the authors' data script does, and counting why."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from sso_lightning.data.snapshot import SteeredExample

DROP_REASONS = ("empty", "chosen_equals_rejected", "equals_raw")


def drop_reason(example: SteeredExample, eos_id: int) -> str | None:
    """Why an example teaches nothing (or nonsense), or None to keep it."""
    r = {k: tuple(t for t in v.ids if t != eos_id) for k, v in example.responses.items()}
    if any(not ids for ids in r.values()):
        return "empty"
    if r["y+"] == r["y-"]:
        return "chosen_equals_rejected"
    if "yo" in r and (r["y+"] == r["yo"] or r["y-"] == r["yo"]):
        return "equals_raw"
    return None


def drop_degenerate(examples: Sequence[SteeredExample], eos_id: int) -> tuple[list[SteeredExample], Counter]:
    kept, dropped = [], Counter()
    for ex in examples:
        reason = drop_reason(ex, eos_id)
        if reason is None:
            kept.append(ex)
        else:
            dropped[reason] += 1
    return kept, dropped
