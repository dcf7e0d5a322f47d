"""Callbacks: when an iteration's data is made (the scheme and the pipeline say how), the
plain policy's quality, and training speed. One epoch is one phase of an SSO iteration.

Epoch-level metrics go straight to the loggers with an explicit ``epoch``: row k of
the summary is the state at the start of iteration k (its data, and the policy's
quality before its updates) plus what happened during it; the last row k = iterations
holds the final policy's quality.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Sequence

import lightning as L
import torch

from sso_lightning.data.snapshot import SteeredExample, read_snapshot
from sso_lightning.data.steering import render_prompt
from sso_lightning.distributed import Ranks, gather, shard
from sso_lightning.engines import Engine
from sso_lightning.generation import Sampling
from sso_lightning.judges import Judge
from sso_lightning.pipeline import IterationPipeline
from sso_lightning.schemes import PhaseStart, Scheme
from sso_lightning.terminal import progress


def log_epoch_metrics(trainer: L.Trainer, metrics: dict[str, float], epoch: int) -> None:
    for logger in trainer.loggers:
        logger.log_metrics({**metrics, "epoch": epoch}, step=trainer.global_step)


def ranks(trainer: L.Trainer) -> Ranks:
    return Ranks(trainer.global_rank, trainer.world_size)


class Iterations(L.Callback):
    """Before every phase (epoch) the scheme prepares its data with the pipeline; the result
    goes to the DataModule and its metrics to the loggers. ``offline`` and ``regenerate`` are
    the data options the scheme honours (``data.offline``, ``data.regenerate``).

    Its state (in every checkpoint) names the snapshot the current phase trains on, with the
    scheme's and the principles' own state: a resumed run reads that snapshot back instead of
    generating it again."""

    def __init__(
        self,
        scheme: Scheme,
        pipeline: IterationPipeline,
        offline: list[SteeredExample] | None = None,
        regenerate: bool = True,
    ):
        self.scheme, self.pipeline, self.offline, self.regenerate = scheme, pipeline, offline, regenerate
        self.current: dict = {}  # the running phase: epoch, phase, the keys it trains and its snapshot
        self.resumed: dict | None = None

    def on_fit_start(self, trainer, pl_module):
        self.pipeline.ranks = ranks(trainer)
        self.pipeline.progress = lambda total, description: progress(trainer, total, description)
        if self.resumed is None:
            self.start_phase(trainer, pl_module, epoch=0)
        else:
            self.continue_phase(trainer, pl_module, self.resumed)

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 < trainer.max_epochs:
            self.start_phase(trainer, pl_module, epoch=trainer.current_epoch + 1)

    def start_phase(self, trainer, pl_module, epoch: int) -> None:
        iteration, index = divmod(epoch, len(self.scheme.phases))
        phase = self.scheme.phases[index]
        keys = pl_module.objective.required_sequences(phase)
        step = PhaseStart(
            self.pipeline,
            pl_module.policy,
            trainer.optimizers[0],
            iteration,
            phase,
            keys,
            self.offline,
            self.regenerate,
        )
        data = self.scheme.start(step)
        pl_module.phase = phase
        trainer.datamodule.epoch = epoch
        self.current.update(epoch=epoch, phase=phase)
        if data is not None:
            trainer.datamodule.set_examples(data.examples, keys)
            self.current.update(keys=list(keys), snapshot=data.snapshot)
            log_epoch_metrics(trainer, data.metrics, iteration)

    def continue_phase(self, trainer, pl_module, state: dict) -> None:
        """The phase a checkpoint was taken in (or about to start), on the data it had."""
        self.scheme.load_state_dict(state["scheme"])
        if "principles" in state:
            self.pipeline.principles.load_state_dict(state["principles"])
        self.current = dict(state["current"])
        keys = self.current["keys"]
        examples = read_snapshot(self.pipeline.snapshot_dir / self.current["snapshot"], pl_module.tokenizer, keys)
        pl_module.phase = self.current["phase"]
        trainer.datamodule.epoch = self.current["epoch"]
        trainer.datamodule.set_examples(examples, keys)

    def state_dict(self) -> dict:
        state = {"current": dict(self.current), "scheme": self.scheme.state_dict()}
        if hasattr(self.pipeline.principles, "state_dict"):  # principles written by a model are kept
            state["principles"] = self.pipeline.principles.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.resumed = state


class PolicyQuality(L.Callback):
    """``eval/quality``: the judge's mean score of the plain policy's own answers on
    held-out prompts, before the first update and after every epoch, sampled by ``engine``."""

    def __init__(self, queries: Sequence[str], judge: Judge, sampling: Sampling, engine: Engine):
        self.queries, self.judge, self.sampling, self.engine = list(queries), judge, sampling, engine
        self.evaluated: list[int] = []  # in checkpoints: a resumed run does not evaluate again

    def on_train_start(self, trainer, pl_module):
        if not self.evaluated:
            self.evaluate(trainer, pl_module, epoch=0)

    def on_train_epoch_end(self, trainer, pl_module):
        done = trainer.current_epoch + 1
        if done % pl_module.phases_per_iteration == 0:  # after a policy phase, not a generator one
            self.evaluate(trainer, pl_module, epoch=done // pl_module.phases_per_iteration)

    def evaluate(self, trainer, pl_module, epoch: int) -> None:
        self.evaluated.append(epoch)
        if not self.queries:
            return
        tokenizer = pl_module.tokenizer
        queries = shard(self.queries, ranks(trainer))
        bar = progress(trainer, len(queries), f"Evaluating after {epoch} epoch(s)")
        prompts = [render_prompt(tokenizer, q) for q in queries]
        responses = self.engine.generate(pl_module.policy, tokenizer, prompts, self.sampling, on_batch=bar.update)
        bar.close()
        scores = gather(self.judge.score(queries, responses), ranks(trainer))
        log_epoch_metrics(trainer, {"eval/quality": sum(scores) / len(scores)}, epoch)

    def state_dict(self) -> dict:
        return {"evaluated": list(self.evaluated)}

    def load_state_dict(self, state: dict) -> None:
        self.evaluated = list(state["evaluated"])


class TrainThroughput(L.Callback):
    """``perf/train_tokens_per_s`` (non-padding tokens through forward+backward+step per
    second of training steps) and ``perf/peak_mem_mb`` (GPU peak, or process RSS peak on CPU)."""

    def on_train_start(self, trainer, pl_module):
        self.on_train_epoch_start(trainer, pl_module)  # a run resumed inside an epoch counts from there

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
