"""The epoch snapshot: what the policy was trained on, one JSON object per line.

A record keeps the authors' fields (instruction, system, p_system, n_system,
chosen, rejected, raw) so their tools read it, plus what this project needs to
audit and retrain exactly: the principles' features, the generated token ids (never
re-tokenised), whether each answer finished, judge scores and the reference
log-probs of every training sequence. A file in the authors' format (text only)
is read too: responses are tokenised and closed with EOS.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sso_lightning.atomic import write_atomic
from sso_lightning.data.principles import PrinciplePair
from sso_lightning.data.prompts import read_jsonl
from sso_lightning.data.steering import SteeredPrompt, steer
from sso_lightning.errors import ConfigError
from sso_lightning.generation import Response
from sso_lightning.sequences import split_key

RESPONSE_FIELDS = {"y+": "chosen", "y-": "rejected", "yo": "raw"}
REQUIRED_FIELDS = ("instruction", "p_system", "n_system", "chosen", "rejected")


@dataclass
class SteeredExample:
    prompt: SteeredPrompt
    responses: dict[str, Response]  # "y+", "y-", "yo"
    scores: dict[str, float] = field(default_factory=dict)  # judge quality per response key
    ref_logps: dict[str, float] = field(default_factory=dict)  # per sequence key, e.g. "x|y+"


def to_record(example: SteeredExample) -> dict:
    p = example.prompt
    responses = {RESPONSE_FIELDS[k]: r for k, r in example.responses.items()}
    return {
        "instruction": p.query,
        "system": "",
        "p_system": p.principles.good,
        "n_system": p.principles.bad,
        **{name: r.text for name, r in responses.items()},
        "features": list(p.principles.features),
        "token_ids": {name: list(r.ids) for name, r in responses.items()},
        "finished": {name: r.finished for name, r in responses.items()},
        "scores": {RESPONSE_FIELDS[k]: s for k, s in example.scores.items()},
        "ref_logps": dict(example.ref_logps),
    }


def from_record(record: dict, tokenizer, where: str) -> SteeredExample:
    """An example from our snapshot format or the authors' text-only format."""
    missing = [f for f in REQUIRED_FIELDS if not isinstance(record.get(f), str)]
    if missing:
        raise ConfigError(
            f"{where}: missing string field(s) {', '.join(missing)} (required: {', '.join(REQUIRED_FIELDS)})"
        )
    principles = PrinciplePair(tuple(record.get("features", ())), record["p_system"], record["n_system"])
    prompt = steer(tokenizer, record["instruction"], principles, record.get("system") or None)
    token_ids, finished = record.get("token_ids", {}), record.get("finished", {})
    responses = {}
    for key, name in RESPONSE_FIELDS.items():
        if not isinstance(record.get(name), str):
            continue
        if name in token_ids:
            ids = checked_ids(token_ids[name], len(tokenizer), f"{where}: token_ids.{name}")
            done = bool(finished.get(name, ids[-1:] == (tokenizer.eos_token_id,)))
        else:
            ids = tuple(tokenizer(record[name], add_special_tokens=False)["input_ids"]) + (tokenizer.eos_token_id,)
            done = True
        responses[key] = Response(ids=ids, text=record[name], finished=done)
    scores = {key: record["scores"][name] for key, name in RESPONSE_FIELDS.items() if name in record.get("scores", {})}
    return SteeredExample(
        prompt=prompt, responses=responses, scores=scores, ref_logps=dict(record.get("ref_logps", {}))
    )


def checked_ids(ids, vocab_size: int, where: str) -> tuple[int, ...]:
    """Stored token ids as the model can take them: a non-empty list of ids in its vocabulary (an
    empty answer has no token to score, and an id outside the vocabulary fails in the embedding)."""
    if not isinstance(ids, list) or not ids:
        raise ConfigError(f"{where} must be a non-empty list of token ids (got {json.dumps(ids)[:40]})")
    bad = next((t for t in ids if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab_size), None)
    if bad is not None:
        raise ConfigError(f"{where}: {json.dumps(bad)} is not a token id of this tokenizer (0 to {vocab_size - 1})")
    return tuple(ids)


def read_snapshot(path: Path, tokenizer, keys: Iterable[str]) -> list[SteeredExample]:
    """Examples from a file, each checked to hold the responses that sequence ``keys`` read."""
    needed = {split_key(key)[1] for key in keys}
    examples = []
    for i, record in read_jsonl(path):
        example = from_record(record, tokenizer, f"{path}:{i}")
        missing = sorted(RESPONSE_FIELDS[k] for k in needed - set(example.responses))
        if missing:
            raise ConfigError(
                f"{path}:{i}: the configured loss needs field(s) {', '.join(missing)}, which this record lacks "
                "(loss.minus=paper needs raw; use loss.minus=naive or off)"
            )
        examples.append(example)
    return examples


def write_snapshot(path: Path, examples: Iterable[SteeredExample]) -> None:
    """Write atomically; never overwrite an existing snapshot."""
    text = "".join(json.dumps(to_record(example), ensure_ascii=False) + "\n" for example in examples)
    try:
        write_atomic(path, text, exclusive=True)
    except FileExistsError:
        raise ConfigError(f"{path}: snapshot already exists; use a new run directory (hydra.run.dir)") from None
