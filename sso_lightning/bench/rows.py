"""The rows of the table. Each runs our side and its baseline(s) on the same workload (model,
examples, batches in the same order, batch size) at the precision it states, and compares them.
Our figures come from the project's code (``ours``), the baselines from ``trl_baseline`` and
``bare``; peak memory from fresh processes (``memory``)."""

from __future__ import annotations

import sys
import time

import torch
from transformers import AutoConfig

from sso_lightning.bench import bare, memory, ours, trl_baseline
from sso_lightning.bench.mfu import peak_bf16_flops, step_flops
from sso_lightning.bench.table import Figure, Row, Target
from sso_lightning.bench.timing import LightningClock, Stats, StepClock
from sso_lightning.bench.workload import Workload
from sso_lightning.data.batching import Collator
from sso_lightning.errors import ConfigError
from sso_lightning.generation import cut_at_eos
from sso_lightning.losses import SSOObjective
from sso_lightning.sequences import PLAIN_KEYS, PROMPT_KEYS
from sso_lightning.train import build

BF16 = "bf16-mixed"
FP32 = "32-true"


STARTED = time.monotonic()
# generation rows' targets by engine, (CPU, GPU): HF generate sorted by length is no slower than
# plain generate; vLLM is >= 5x on a GPU (issue 12's target), and on CPU the row reports what it measures
GENERATION_TARGETS = {"hf": (0.9, 0.9), "vllm": (1.0, 5.0)}


def log(message: str) -> None:
    print(f"bench [{time.monotonic() - STARTED:5.0f} s]: {message}", file=sys.stderr, flush=True)


def precision_label(precision: str, dtype: torch.dtype) -> str:
    """``fp32`` for float32 weights without autocast; else the trainer precision and the weights' dtype."""
    weights = str(dtype).removeprefix("torch.")
    if precision == FP32:
        return "fp32" if dtype == torch.float32 else f"{weights} weights"
    return f"{precision}, {weights} weights"


def throughput(work: Workload, seconds: list[float], tokens: list[int], items: list[int], unit: str) -> Figure:
    """Per timed step: non-padding tokens/s, and items/s in ``unit``."""
    if not len(seconds) == len(tokens) == len(items) == work.settings.batches:
        raise RuntimeError(f"{len(seconds)} steps timed for {work.settings.batches} batches")
    seconds, tokens, items = work.timed(seconds), work.timed(tokens), work.timed(items)
    return Figure(
        Stats.of([t / s for t, s in zip(tokens, seconds)]),
        "tok/s",
        Stats.of([i / s for i, s in zip(items, seconds)]),
        unit,
    )


def ours_training(work: Workload, objective: SSOObjective, precision: str) -> list[float]:
    log(f"ours: SSOModule in a Lightning Trainer, {len(objective.required_sequences())} sequences, {precision}")
    torch.manual_seed(work.settings.seed)
    clock = StepClock(work.device)
    ours.fit_steps(work, objective, precision, [LightningClock(clock)], work.settings.batches)
    return clock.seconds


def bare_training(work: Workload, keys: tuple[str, ...], beta: float, bf16: bool) -> list[float]:
    log(f"bare PyTorch loop, {len(keys)} sequences, {'bf16 autocast' if bf16 else 'no autocast'}")
    torch.manual_seed(work.settings.seed)
    model = work.plain_model()
    model.train()
    optimizer = build(work.cfg.optimizer)(params=model.parameters())
    collate, clip = Collator(keys, work.tokenizer.pad_token_id), work.cfg.trainer.gradient_clip_val
    clock = StepClock(work.device)
    for batch in work.batches():
        batch = bare.to_device(collate(batch), work.device)
        clock.start()
        bare.preference_step(model, optimizer, batch, beta, clip, bf16)
        clock.stop()
    return clock.seconds


TRL_RUNS = (  # (bf16, precompute_ref_log_probs, target ratio, name)
    (True, False, 1.25, "TRL DPOTrainer, defaults (bf16 autocast, gradient checkpointing, reference model)"),
    (True, True, 1.0, "TRL DPOTrainer, precompute_ref_log_probs"),
    (False, False, 1.25, "TRL DPOTrainer, defaults but bf16=False, gradient_checkpointing=False"),
    (False, True, 1.0, "TRL DPOTrainer, precompute_ref_log_probs, bf16=False, gradient_checkpointing=False"),
)


def pbaa_rows(work: Workload) -> list[Row]:
    """DPO on x|y+ against x|y-: ours in bf16-mixed against TRL's bf16 defaults, and all in float32
    weights without autocast against TRL and the bare loop."""
    objective = build(work.cfg.bench.pbaa_loss)
    keys = objective.required_sequences()
    size = work.settings.batch_size
    tokens, pairs = work.tokens(keys), [size] * work.settings.batches
    fp32_work = work.with_options(**{"model.dtype": "float32"})
    ours_figure = {
        True: throughput(work, ours_training(work, objective, BF16), tokens, pairs, "pairs/s"),
        False: throughput(fp32_work, ours_training(fp32_work, objective, FP32), tokens, pairs, "pairs/s"),
    }
    labels = {True: precision_label(BF16, work.dtype), False: "fp32"}
    rows, unavailable = [], ""
    for bf16, precompute, target, name in TRL_RUNS:
        baseline = None
        if not unavailable:
            log(f"{name}, {labels[bf16]}")
            try:
                torch.manual_seed(work.settings.seed)
                seconds = trl_baseline.dpo_step_seconds(work if bf16 else fp32_work, bf16, precompute)
                baseline = throughput(work, seconds, tokens, pairs, "pairs/s")
            except trl_baseline.Unavailable as e:
                unavailable = str(e)
        rows.append(
            Row("PBAA step", labels[bf16], name, ours_figure[bf16], baseline, Target(">=", target), unavailable)
        )
    bare_seconds = bare_training(fp32_work, keys, objective.base.beta, bf16=False)
    bare_figure = throughput(work, bare_seconds, tokens, pairs, "pairs/s")
    rows.append(Row("PBAA step", "fp32", "bare PyTorch loop", ours_figure[False], bare_figure, Target(">=", 0.9)))
    return rows


def sso_row(work: Workload) -> Row:
    """The configured objective (loss=, default SSO) in the configured precision, against the bare
    loop over the same rows."""
    objective = build(work.cfg.loss)
    keys = objective.required_sequences()
    precision = str(work.cfg.trainer.precision)
    tokens, examples = work.tokens(keys), [work.settings.batch_size] * work.settings.batches
    ours_seconds = ours_training(work, objective, precision)
    bare_seconds = bare_training(work, keys, objective.base.beta, bf16=precision == BF16)
    return Row(
        f"SSO step ({len(keys)} sequences per example)",
        precision_label(precision, work.dtype),
        "bare PyTorch loop",
        throughput(work, ours_seconds, tokens, examples, "examples/s"),
        throughput(work, bare_seconds, tokens, examples, "examples/s"),
        Target(">=", 0.9),
    )


def scoring_row(work: Workload) -> Row:
    """The sequences an iteration scores (the objective's and the plain pair), one batch per call."""
    keys = tuple(dict.fromkeys((*build(work.cfg.loss).required_sequences(), *PLAIN_KEYS)))
    pad = work.tokenizer.pad_token_id
    tokens, rows = work.tokens(keys), [len(keys) * work.settings.batch_size] * work.settings.batches
    log("ours: score_sequences")
    policy, model = ours.loaded(work)
    ours_clock = StepClock(work.device)
    for batch in work.batches():
        ours_clock.start()
        ours.score(policy, model, batch, keys, pad)
        ours_clock.stop()
    del policy
    log("bare no-grad padded forward")
    plain = work.plain_model()
    bare_clock = StepClock(work.device)
    for batch in work.batches():
        bare_clock.start()
        bare.score(plain, batch, keys, pad)
        bare_clock.stop()
    return Row(
        "scoring (reference / on-policy)",
        precision_label(FP32, work.dtype),
        "bare no-grad padded forward",
        throughput(work, ours_clock.seconds, tokens, rows, "sequences/s"),
        throughput(work, bare_clock.seconds, tokens, rows, "sequences/s"),
        Target(">=", 0.9),
    )


def generation_row(work: Workload, backend: str | None = None) -> Row:
    """Each batch's x, x+ and x- answered, ``bench.max_new_tokens`` at most, with the configured
    sampling (``generation.*``) and the bench's batch size on both sides, by the engine ``backend``
    (default ``generation.backend``); tokens are those generated up to and including EOS. An
    engine's start-up falls in the warm-up steps."""
    size, tokenizer = work.settings.batch_size, work.tokenizer
    overrides = {"backend": backend} if backend else {}
    settings = build(work.cfg.generation, max_new_tokens=work.settings.max_new_tokens, batch_size=size, **overrides)
    sampling, backend = settings.sampling(), settings.backend
    name = f"generation, {backend} ({work.settings.max_new_tokens} new tokens at most)"
    baseline_name = "plain batched model.generate, prompts in order"
    target = Target(">=", GENERATION_TARGETS.get(backend, (0.9, 0.9))[work.device.type == "cuda"])
    try:
        engine = settings.engine()
    except ConfigError as e:  # the engine's package is not installed
        return Row(name, precision_label(FP32, work.dtype), baseline_name, None, None, target, str(e))
    prompts = [[ex.prompt.ids[key] for ex in batch for key in PROMPT_KEYS] for batch in work.batches()]
    counts = [len(p) for p in prompts]
    log(f"ours: {backend} engine")
    policy, _ = ours.loaded(work)
    torch.manual_seed(work.settings.seed)
    ours_clock, ours_tokens = StepClock(work.device), []
    try:
        for step in prompts:
            ours_clock.start()
            responses = engine.generate(policy, tokenizer, step, sampling)
            ours_clock.stop()
            ours_tokens.append(sum(len(r.ids) for r in responses))
    finally:
        engine.close()
    del policy
    log("plain batched model.generate")
    plain = work.plain_model()
    torch.manual_seed(work.settings.seed)
    bare_clock, bare_tokens = StepClock(work.device), []
    for step in prompts:
        bare_clock.start()
        rows = bare.generate(plain, tokenizer, step, sampling)
        bare_clock.stop()
        bare_tokens.append(sum(len(cut_at_eos(row, tokenizer.eos_token_id, tokenizer).ids) for row in rows))
    return Row(
        name,
        precision_label(FP32, work.dtype),
        baseline_name,
        throughput(work, ours_clock.seconds, ours_tokens, counts, "prompts/s"),
        throughput(work, bare_clock.seconds, bare_tokens, counts, "prompts/s"),
        target,
    )


def memory_rows(work: Workload) -> list[Row]:
    """Our SSO step against a bare SFT step on the same rows, each in a fresh process; with full
    weights and with LoRA adapters (``model.lora``)."""
    precision = precision_label(str(work.cfg.trainer.precision), work.dtype)
    rows = []
    for lora in (False, True):
        adapted = work.with_options(**{"model.lora.enabled": lora})
        suffix = ", LoRA" if lora else ""
        log(f"peak memory{suffix}: ours (SSO step), then bare SFT step, each in a fresh process")
        ours_mib = memory.in_fresh_process(memory.ours_sso_step_mib, adapted)
        bare_mib = memory.in_fresh_process(memory.bare_sft_step_mib, adapted)
        rows.append(
            Row(
                f"peak memory, SSO step{suffix}",
                precision,
                f"bare SFT step (model(..., labels).loss, backward, optimizer){suffix}",
                Figure(Stats.of([ours_mib]), "MiB"),
                Figure(Stats.of([bare_mib]), "MiB"),
                Target("<=", 1.15),
            )
        )
    return rows


def mfu_row(work: Workload) -> Row:
    """Our SSO step in bf16-mixed on a GPU: achieved model FLOP/s over the GPU's peak (``mfu``)."""
    target, name = Target(">=", 0.40, percent=True), "MFU, SSO step"
    if work.device.type != "cuda":
        return Row(name, BF16, "the GPU's peak dense bf16 FLOP/s", None, None, target, "GPU only: skipped on CPU")
    device_name = torch.cuda.get_device_name(work.device)
    peak = peak_bf16_flops(device_name)
    if peak is None:
        return Row(name, BF16, f"{device_name} peak", None, None, target, f"no peak FLOP/s known for {device_name}")
    objective = build(work.cfg.loss)
    keys = objective.required_sequences()
    seconds = work.timed(ours_training(work, objective, BF16))
    config = AutoConfig.from_pretrained(work.path)
    flops = work.timed([step_flops(config, work.parameters, lengths) for lengths in work.row_lengths(keys)])
    return Row(
        name,
        precision_label(BF16, work.dtype),
        f"{device_name} peak dense bf16",
        Figure(Stats.of([f / s for f, s in zip(flops, seconds)]), "FLOP/s"),
        Figure(Stats.of([peak]), "FLOP/s"),
        target,
    )


ROW_BUILDERS = {
    "pbaa": pbaa_rows,
    "sso": lambda work: [sso_row(work)],
    "scoring": lambda work: [scoring_row(work)],
    "generation": lambda work: [generation_row(work)],
    "vllm": lambda work: [generation_row(work, "vllm")],
    "memory": memory_rows,
    "mfu": lambda work: [mfu_row(work)],
}
