"""One SSO iteration's training data, Lightning-free, in the order it happens:

    steer -> sample -> drop degenerate -> judge -> score (on-policy and reference) -> snapshot

``IterationPipeline.run`` does all of it with the current weights; a scheme (``schemes/``)
calls the steps it needs in the order it needs them, and the callbacks only decide when.
Under several processes each rank works on its share of the prompts and the results are
gathered before the snapshot, which rank 0 writes. A test can call every step without a
Trainer (one process, no progress bars).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from sso_lightning.data.filtering import DROP_REASONS, drop_degenerate
from sso_lightning.data.snapshot import SteeredExample, write_snapshot
from sso_lightning.data.steering import SteeredPrompt, steer
from sso_lightning.distributed import Ranks, gather, shard
from sso_lightning.engines import Engine
from sso_lightning.engines.hf import Engine as HFGenerate
from sso_lightning.errors import ConfigError
from sso_lightning.generation import Sampling
from sso_lightning.judges import Judge, pair_preferences
from sso_lightning.references import IterationReference
from sso_lightning.scoring import score_sequences
from sso_lightning.sequences import PLAIN_KEYS, RESPONSE_KEYS, RESPONSE_PROMPTS


@dataclass
class IterationData:
    examples: list[SteeredExample]  # every rank's examples, in prompt order
    metrics: dict[str, float]  # named "<prefix>/..."
    snapshot: str  # the file under the snapshot directory that holds them


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def no_progress(total: int, description: str) -> _NoBar:
    return _NoBar()


@dataclass
class IterationPipeline:
    """The training queries with their principles, the judge, the sampling settings and the
    reference; ``ranks`` and ``progress`` are set by the run (defaults: one process, silent)."""

    queries: Sequence[str]
    principles: object  # .for_queries(queries) -> PrinciplePair per query; may .bind(policy, tokenizer)
    judge: Judge
    sampling: Sampling
    tokenizer: object
    snapshot_dir: Path
    reference: object = field(default_factory=IterationReference)  # see references.py
    score_batch_size: int = 64
    max_length: int | None = None  # data.max_length: rows are scored as training cuts them
    packing: bool = False  # model.packing, resolved: rows are scored as training runs them
    engine: Engine = field(default_factory=HFGenerate)  # generation.backend: what samples the answers
    prompt_metrics: Mapping[str, float] = field(default_factory=dict)  # data/prompts_cut, ...: logged every iteration
    ranks: Ranks = field(default_factory=Ranks)
    progress: Callable = no_progress

    def start(self, policy) -> None:
        """Before the first iteration: the reference remembers what it needs of the initial policy."""
        self.reference.start(policy)

    def run(self, policy, keys: Sequence[str], snapshot: str, iteration: int) -> IterationData:
        """Every step with ``policy``: its answers to steered prompts, prepared to train ``keys``."""
        kept, metrics = self.sample(policy, self.steer(policy), RESPONSE_PROMPTS, iteration)
        return self.prepare(policy, kept, keys, snapshot, metrics)

    def steer(self, policy) -> list[SteeredPrompt]:
        """This rank's share of the training prompts, each as x, x+ and x-."""
        if hasattr(self.principles, "bind"):  # a principle writer may use the policy itself
            self.principles.bind(policy, self.tokenizer, self.engine)
        principles = dict(zip(self.queries, self.principles.for_queries(self.queries)))
        return [steer(self.tokenizer, q, principles[q]) for q in self.own_share(self.queries)]

    def own_share(self, items: Sequence) -> list:
        return shard(items, self.ranks)

    def sample(
        self, policy, prompts: Sequence[SteeredPrompt], responses: Mapping[str, str], iteration: int
    ) -> tuple[list[SteeredExample], dict[str, float]]:
        """``policy`` answers each prompt's steered versions (``responses`` maps a response key to
        the prompt key it answers); degenerate examples are dropped. Counts are gathered over ranks;
        returns this rank's kept examples and the counts as ``data/*`` metrics."""
        requests = [(p, key) for p in prompts for key in responses.values()]
        bar = self.progress(len(requests), f"Generating epoch {iteration}")
        began = time.perf_counter()
        prompt_ids = [p.ids[k] for p, k in requests]
        outputs = self.engine.generate(policy, self.tokenizer, prompt_ids, self.sampling, on_batch=bar.update)
        seconds = time.perf_counter() - began
        bar.close()
        n = len(responses)
        examples = [
            SteeredExample(prompt=p, responses={key: outputs[n * i + j] for j, key in enumerate(responses)})
            for i, p in enumerate(prompts)
        ]
        kept, dropped = drop_degenerate(examples, self.tokenizer.eos_token_id)
        counts = Counter(
            dropped,
            examples=len(examples),
            kept=len(kept),
            responses=len(outputs),
            finished=sum(r.finished for r in outputs),
            tokens=sum(len(r.ids) for r in outputs),
        )
        per_rank = gather([(counts, seconds)], self.ranks)
        total = sum((c for c, _ in per_rank), Counter())
        if not total["kept"]:
            raise ConfigError(
                f"epoch {iteration}: all {total['examples']} generated examples were degenerate "
                f"({ {r: total[r] for r in DROP_REASONS} }); raise generation.temperature or generation.max_new_tokens"
            )
        metrics = {
            "data/kept_fraction": total["kept"] / total["examples"],
            "data/gen_tokens_per_s": total["tokens"] / max(s for _, s in per_rank),
            "data/unfinished_fraction": 1 - total["finished"] / total["responses"],
            **{f"data/dropped_{reason}": float(total[reason]) for reason in DROP_REASONS},
            **(self.principles.metrics() if hasattr(self.principles, "metrics") else {}),
            **self.prompt_metrics,
        }
        return kept, metrics

    def judge_responses(self, examples: Sequence[SteeredExample]) -> None:
        """Scores of every response key all examples have (also for files that carry scores)."""
        queries = [ex.prompt.query for ex in examples]
        for key in RESPONSE_KEYS:
            if all(key in ex.responses for ex in examples):
                for ex, s in zip(examples, self.judge.score(queries, [ex.responses[key] for ex in examples])):
                    ex.scores[key] = s

    def score(self, policy, examples: Sequence[SteeredExample], keys: Sequence[str]) -> dict[str, list[float]]:
        """Store reference log-probs of ``keys`` (and of the plain pair) with the examples; return
        the on-policy probability exp(mean token log-prob) of y+ and y- after the plain query."""
        scored = tuple(dict.fromkeys((*keys, *PLAIN_KEYS)))
        pad, size = self.tokenizer.pad_token_id, self.score_batch_size
        score_with = partial(
            score_sequences,
            examples=examples,
            keys=scored,
            pad_id=pad,
            batch_size=size,
            max_length=self.max_length,
            packing=self.packing,
        )
        on_policy = score_with(policy)
        reference = self.reference.score(policy, score_with, on_policy)
        for i, ex in enumerate(examples):
            ex.ref_logps = {k: float(reference[k][0][i]) for k in scored}
        return {k: torch.exp(on_policy[k][0] / on_policy[k][1].clamp(min=1)).tolist() for k in PLAIN_KEYS}

    def prepare(
        self,
        policy,
        examples: list[SteeredExample],
        keys: Sequence[str],
        snapshot: str,
        metrics: dict[str, float],
        prefix: str = "data",
    ) -> IterationData:
        """Judge this rank's examples, score them, gather all ranks', write ``<snapshot_dir>/<snapshot>``
        (rank 0), and compute the data metrics (named ``<prefix>/*``)."""
        self.judge_responses(examples)
        prob = self.score(policy, examples, keys)
        judged = all({"y+", "y-"} <= set(ex.scores) for ex in examples)
        preferences = (
            pair_preferences(
                self.judge,
                [ex.prompt.query for ex in examples],
                [ex.responses["y+"] for ex in examples],
                [ex.responses["y-"] for ex in examples],
                chosen_scores=[ex.scores["y+"] for ex in examples],
                rejected_scores=[ex.scores["y-"] for ex in examples],
            )
            if judged
            else [None] * len(examples)
        )
        examples = gather(examples, self.ranks)
        stats = gather(list(zip(prob["x|y+"], prob["x|y-"], preferences)), self.ranks)
        if self.ranks.is_global_zero:
            write_snapshot(self.snapshot_dir / snapshot, examples)
        self.ranks.barrier()
        metrics = {
            **metrics,
            "data/num_examples": float(len(examples)),
            "data/onpolicy_prob_chosen": sum(s[0] for s in stats) / len(stats),
            "data/onpolicy_prob_rejected": sum(s[1] for s in stats) / len(stats),
        }
        if all(s[2] is not None for s in stats):
            metrics["data/pair_accuracy"] = sum(s[2] for s in stats) / len(stats)
            for key, name in (("y+", "chosen"), ("y-", "rejected"), ("yo", "raw")):
                if all(key in ex.scores for ex in examples):
                    metrics[f"data/quality_{name}"] = sum(ex.scores[key] for ex in examples) / len(examples)
        return IterationData(
            examples, {name.replace("data/", f"{prefix}/", 1): v for name, v in metrics.items()}, snapshot
        )
