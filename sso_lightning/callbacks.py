"""Callbacks: regenerate the steered data before every epoch (one epoch = one SSO
iteration), measure the plain policy's quality, and time training.

Epoch-level metrics go straight to the loggers with an explicit ``epoch``: row k of
the summary is the state at the start of iteration k (its data, and the policy's
quality before its updates) plus what happened during it; the last row k = epochs
holds the final policy's quality.
"""

from __future__ import annotations

import copy
import resource
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from sso_lightning.data.filtering import DROP_REASONS, drop_degenerate
from sso_lightning.data.principles import PrincipleLibrary
from sso_lightning.data.snapshot import SteeredExample, write_snapshot
from sso_lightning.data.steering import SteeredPrompt, render_prompt, steer
from sso_lightning.distributed import gather, shard
from sso_lightning.errors import ConfigError
from sso_lightning.generation import Sampling, generate
from sso_lightning.judges import Judge, pair_preferences
from sso_lightning.models import has_adapters
from sso_lightning.scoring import score_sequences

PLAIN_KEYS = ("x|y+", "x|y-")
RESPONSE_PROMPTS = {"y+": "x+", "y-": "x-", "yo": "x"}  # each response key and the prompt it answers
REFERENCES = ("iteration", "initial")


def log_epoch_metrics(trainer: L.Trainer, metrics: dict[str, float], epoch: int) -> None:
    for logger in trainer.loggers:
        logger.log_metrics({**metrics, "epoch": epoch}, step=trainer.global_step)


def progress(trainer: L.Trainer, total: int, description: str) -> Tqdm:
    """A bar in Lightning's own style, shown when the trainer shows its progress bar."""
    return Tqdm(
        total=total,
        desc=description,
        disable=trainer.progress_bar_callback is None,
        leave=False,
        file=sys.stderr,
        dynamic_ncols=True,
    )


class Regeneration(L.Callback):
    """Before each epoch the current policy samples y+ | x+, y- | x- and yo | x for the
    training prompts; degenerate examples are dropped, the rest judged, given reference
    log-probs and written to ``<snapshot_dir>/epoch_<k>.jsonl``. Given
    ``offline_examples`` (read from a file), every epoch trains on those instead, with
    reference log-probs from the initial policy; with ``regenerate=False`` every epoch
    trains on what the initial policy generated before the first."""

    def __init__(
        self,
        queries: Sequence[str],
        principles: PrincipleLibrary,
        judge: Judge,
        sampling: Sampling,
        keys: Sequence[str],
        snapshot_dir: str | Path,
        reference: str = "iteration",
        offline_examples: list[SteeredExample] | None = None,
        score_batch_size: int = 64,
        regenerate: bool = True,
    ):
        if reference not in REFERENCES:
            raise ConfigError(f"data.reference={reference} is not valid (valid: {', '.join(REFERENCES)})")
        self.queries, self.principles, self.judge, self.sampling = list(queries), principles, judge, sampling
        self.keys, self.snapshot_dir, self.reference = tuple(keys), Path(snapshot_dir), reference
        self.offline_examples, self.score_batch_size = offline_examples, score_batch_size
        self.regenerate_every_epoch = regenerate and offline_examples is None
        self.initial_policy = None

    def on_fit_start(self, trainer, pl_module):
        self.bind_principles(pl_module)
        if self.offline_examples is not None:
            self.prepare(trainer, pl_module, shard(self.offline_examples, trainer), epoch=0, extra={})
            return
        self.keep_initial_policy(pl_module)
        self.regenerate(trainer, pl_module, epoch=0)

    def on_train_epoch_end(self, trainer, pl_module):
        if self.regenerate_every_epoch and trainer.current_epoch + 1 < trainer.max_epochs:
            self.regenerate(trainer, pl_module, epoch=trainer.current_epoch + 1)

    def bind_principles(self, pl_module) -> None:
        if hasattr(self.principles, "bind"):  # a principle writer may use the policy itself
            self.principles.bind(pl_module.policy, pl_module.tokenizer)

    def keep_initial_policy(self, pl_module) -> None:
        if self.reference == "initial" and not has_adapters(pl_module.policy):
            self.initial_policy = copy.deepcopy(pl_module.policy).cpu()

    def regenerate(self, trainer, pl_module, epoch: int) -> None:
        prompts = self.steered_shard(trainer, pl_module.tokenizer)
        kept, extra = self.sample(trainer, pl_module, prompts, RESPONSE_PROMPTS, epoch)
        self.prepare(trainer, pl_module, kept, epoch, extra)

    def steered_shard(self, trainer, tokenizer) -> list[SteeredPrompt]:
        """This rank's share of the training prompts, each as x, x+ and x-."""
        principles = dict(zip(self.queries, self.principles.for_queries(self.queries)))
        return [steer(tokenizer, q, principles[q]) for q in shard(self.queries, trainer)]

    def sample(self, trainer, pl_module, prompts: Sequence[SteeredPrompt], responses: dict[str, str], epoch: int):
        """The current weights answer each prompt's steered versions (``responses`` maps a
        response key to the prompt key it answers); degenerate examples are dropped. The
        counts are gathered over ranks; returns this rank's kept examples and the counts as metrics."""
        policy, tokenizer = pl_module.policy, pl_module.tokenizer
        requests = [(p, key) for p in prompts for key in responses.values()]
        bar = progress(trainer, len(requests), f"Generating epoch {epoch}")
        start = time.perf_counter()
        outputs = generate(policy, tokenizer, [p.ids[k] for p, k in requests], self.sampling, on_batch=bar.update)
        seconds = time.perf_counter() - start
        bar.close()
        n = len(responses)
        examples = [
            SteeredExample(prompt=p, responses={key: outputs[n * i + j] for j, key in enumerate(responses)})
            for i, p in enumerate(prompts)
        ]
        kept, dropped = drop_degenerate(examples, tokenizer.eos_token_id)
        counts = Counter(
            dropped,
            examples=len(examples),
            kept=len(kept),
            responses=len(outputs),
            finished=sum(r.finished for r in outputs),
            tokens=sum(len(r.ids) for r in outputs),
        )
        per_rank = gather([(counts, seconds)], trainer)
        total = sum((c for c, _ in per_rank), Counter())
        if not total["kept"]:
            raise ConfigError(
                f"epoch {epoch}: all {total['examples']} generated examples were degenerate "
                f"({ {r: total[r] for r in DROP_REASONS} }); raise generation.temperature or generation.max_new_tokens"
            )
        extra = {
            "data/kept_fraction": total["kept"] / total["examples"],
            "data/gen_tokens_per_s": total["tokens"] / max(s for _, s in per_rank),
            "data/unfinished_fraction": 1 - total["finished"] / total["responses"],
            **{f"data/dropped_{reason}": float(total[reason]) for reason in DROP_REASONS},
            **(self.principles.metrics() if hasattr(self.principles, "metrics") else {}),
        }
        return kept, extra

    def initial_scores(self, policy, examples, keys, pad):
        """Log-probs under the model the run started from: the base with adapters disabled
        under LoRA (no copy held), else a CPU copy brought to the device only for this."""
        if has_adapters(policy):
            with policy.disable_adapter():
                return score_sequences(policy, examples, keys, pad, self.score_batch_size)
        device = next(policy.parameters()).device
        try:
            return score_sequences(self.initial_policy.to(device), examples, keys, pad, self.score_batch_size)
        finally:
            self.initial_policy.cpu()

    def prepare(
        self,
        trainer,
        pl_module,
        examples: list[SteeredExample],
        epoch: int,
        extra: dict,
        keys: Sequence[str] | None = None,
        snapshot: str | None = None,
        prefix: str = "data",
    ) -> None:
        """This rank's share: judge (always with the configured judge, also for files that
        carry scores), attach reference log-probs of ``keys`` (default: the objective's),
        measure on-policy-ness and preferences. Then gather, let rank 0 write the snapshot
        (default ``epoch_<k>.jsonl``), and hand all examples to the DataModule. Metrics are
        logged as ``<prefix>/*``."""
        for key in ("y+", "y-", "yo"):
            if all(key in ex.responses for ex in examples):
                scores = self.judge.score([ex.prompt.query for ex in examples], [ex.responses[key] for ex in examples])
                for ex, s in zip(examples, scores):
                    ex.scores[key] = s
        policy, pad = pl_module.policy, pl_module.tokenizer.pad_token_id
        keys = tuple(keys or self.keys)
        scored = tuple(dict.fromkeys(keys + PLAIN_KEYS))
        on_policy = score_sequences(policy, examples, scored, pad, self.score_batch_size)
        reference = on_policy
        if self.reference == "initial" and self.offline_examples is None:
            reference = self.initial_scores(policy, examples, scored, pad)
        for i, ex in enumerate(examples):
            ex.ref_logps = {k: float(reference[k][0][i]) for k in scored}
        prob = {k: torch.exp(on_policy[k][0] / on_policy[k][1].clamp(min=1)).tolist() for k in PLAIN_KEYS}
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

        examples = gather(examples, trainer)
        stats = gather(list(zip(prob["x|y+"], prob["x|y-"], preferences)), trainer)
        if trainer.is_global_zero:
            write_snapshot(self.snapshot_dir / (snapshot or f"epoch_{epoch}.jsonl"), examples)
        trainer.strategy.barrier("snapshot written")
        trainer.datamodule.set_examples(examples, keys)

        metrics = {
            **extra,
            "data/num_examples": float(len(examples)),
            "data/onpolicy_prob_chosen": sum(s[0] for s in stats) / len(stats),
            "data/onpolicy_prob_rejected": sum(s[1] for s in stats) / len(stats),
        }
        if all(s[2] is not None for s in stats):
            metrics["data/pair_accuracy"] = sum(s[2] for s in stats) / len(stats)
            for key, name in (("y+", "chosen"), ("y-", "rejected"), ("yo", "raw")):
                if all(key in ex.scores for ex in examples):
                    metrics[f"data/quality_{name}"] = sum(ex.scores[key] for ex in examples) / len(examples)
        log_epoch_metrics(trainer, {name.replace("data/", f"{prefix}/", 1): v for name, v in metrics.items()}, epoch)


class TwoStageRegeneration(Regeneration):
    """Scheme two_stage (SSO.md, 2) as two epochs per iteration k. Before epoch 2k the
    policy samples y+, y-, yo (``epoch_<k>_generator.jsonl``, metrics ``steering/*``), and
    its trainable weights and optimizer state are set aside on the CPU: epoch 2k trains
    those weights as the data generator on L+ + L-, from the policy and with a fresh
    optimizer. After it the generator samples fresh y+ | x+ and y- | x-, the policy's
    weights and optimizer state come back, and epoch 2k+1 trains the policy on those pairs
    (``epoch_<k>.jsonl``, ``data/*``), reference log-probs and on-policy-ness taken from
    the policy. Under LoRA only the adapters are set aside: generator and policy are two
    adapter sets on one frozen base, and the generator lives only for its iteration."""

    def __init__(
        self,
        queries,
        principles,
        judge,
        sampling,
        objective,
        snapshot_dir,
        reference="iteration",
        score_batch_size: int = 64,
    ):
        super().__init__(
            queries,
            principles,
            judge,
            sampling,
            objective.required_sequences("policy"),
            snapshot_dir,
            reference,
            score_batch_size=score_batch_size,
        )
        self.generator_keys = objective.required_sequences("generator")
        self.prompts, self.policy_state = [], None

    def on_fit_start(self, trainer, pl_module):
        self.bind_principles(pl_module)
        self.keep_initial_policy(pl_module)
        self.start_generator_phase(trainer, pl_module, iteration=0)

    def on_train_epoch_end(self, trainer, pl_module):
        iteration, phase = divmod(trainer.current_epoch, 2)
        if phase == 0:
            self.start_policy_phase(trainer, pl_module, iteration)
        elif iteration + 1 < trainer.max_epochs // 2:
            self.start_generator_phase(trainer, pl_module, iteration + 1)

    def start_generator_phase(self, trainer, pl_module, iteration: int) -> None:
        self.prompts = self.steered_shard(trainer, pl_module.tokenizer)
        kept, extra = self.sample(trainer, pl_module, self.prompts, RESPONSE_PROMPTS, iteration)
        self.prepare(
            trainer,
            pl_module,
            kept,
            iteration,
            extra,
            keys=self.generator_keys,
            snapshot=f"epoch_{iteration}_generator.jsonl",
            prefix="steering",
        )
        self.policy_state = set_aside(pl_module.policy, trainer.optimizers[0])
        pl_module.phase = "generator"

    def start_policy_phase(self, trainer, pl_module, iteration: int) -> None:
        kept, extra = self.sample(trainer, pl_module, self.prompts, {"y+": "x+", "y-": "x-"}, iteration)
        restore(pl_module.policy, trainer.optimizers[0], self.policy_state)
        self.policy_state = None
        self.prepare(trainer, pl_module, kept, iteration, extra)
        pl_module.phase = "policy"


def set_aside(model, optimizer) -> dict:
    """CPU copies of the trainable weights and of the optimizer state; the optimizer then
    starts empty (for the generator)."""
    weights = {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}
    state = optimizer.state_dict()
    state = {
        "state": {
            i: {k: v.to("cpu", copy=True) if torch.is_tensor(v) else v for k, v in s.items()}
            for i, s in state["state"].items()
        },
        "param_groups": copy.deepcopy(state["param_groups"]),
    }
    optimizer.state.clear()
    return {"weights": weights, "optimizer": state}


def restore(model, optimizer, saved: dict) -> None:
    """Put back what ``set_aside`` kept, in place (so DDP and the optimizer keep their parameters)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in saved["weights"]:
                p.copy_(saved["weights"][name])
    optimizer.load_state_dict(saved["optimizer"])


class PolicyQuality(L.Callback):
    """``eval/quality``: the judge's mean score of the plain policy's own answers on
    held-out prompts, before the first update and after every epoch."""

    def __init__(self, queries: Sequence[str], judge: Judge, sampling: Sampling):
        self.queries, self.judge, self.sampling = list(queries), judge, sampling

    def on_train_start(self, trainer, pl_module):
        self.evaluate(trainer, pl_module, epoch=0)

    def on_train_epoch_end(self, trainer, pl_module):
        done = trainer.current_epoch + 1
        if done % pl_module.phases_per_iteration == 0:  # after a policy phase, not a generator one
            self.evaluate(trainer, pl_module, epoch=done // pl_module.phases_per_iteration)

    def evaluate(self, trainer, pl_module, epoch: int) -> None:
        if not self.queries:
            return
        tokenizer = pl_module.tokenizer
        queries = shard(self.queries, trainer)
        bar = progress(trainer, len(queries), f"Evaluating after {epoch} epoch(s)")
        prompts = [render_prompt(tokenizer, q) for q in queries]
        responses = generate(pl_module.policy, tokenizer, prompts, self.sampling, on_batch=bar.update)
        bar.close()
        scores = gather(self.judge.score(queries, responses), trainer)
        log_epoch_metrics(trainer, {"eval/quality": sum(scores) / len(scores)}, epoch)


class TrainThroughput(L.Callback):
    """``perf/train_tokens_per_s`` (non-padding tokens through forward+backward+step per
    second of training steps) and ``perf/peak_mem_mb`` (GPU peak, or process RSS peak on CPU)."""

    def on_train_epoch_start(self, trainer, pl_module):
        # the phase as the epoch ran: regeneration may switch it in its own epoch-end hook
        self.tokens, self.seconds, self.phase = 0, 0.0, pl_module.phase

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.sync(pl_module)
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.sync(pl_module)
        self.seconds += time.perf_counter() - self.start
        self.tokens += int(batch["attention_mask"].sum())

    def on_train_epoch_end(self, trainer, pl_module):
        if self.phase == "generator":  # two_stage: the generator's own speed; the peak comes with the policy's
            if self.seconds > 0:
                log_epoch_metrics(
                    trainer, {"perf/generator_tokens_per_s": self.tokens / self.seconds}, pl_module.iteration
                )
            return
        if pl_module.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(pl_module.device) / 2**20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        metrics = {"perf/peak_mem_mb": peak}
        if self.seconds > 0:
            metrics["perf/train_tokens_per_s"] = self.tokens / self.seconds
        log_epoch_metrics(trainer, metrics, pl_module.iteration)

    @staticmethod
    def sync(pl_module):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
