"""What every side of every row shares: the config, the model directory and its tokenizer, the
examples, the batch size, the device and the configured weight dtype. Each side loads its own fresh
copy of the model from the directory (TRL patches the model it trains, and no side may inherit
another's optimizer state or allocator caches)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from sso_lightning.bench.fit import check_fits
from sso_lightning.bench.settings import BenchSettings
from sso_lightning.bench.shapes import save_random_model, synthetic_examples
from sso_lightning.data.batching import sequence_pairs
from sso_lightning.data.snapshot import SteeredExample
from sso_lightning.models import PretrainedPolicy, resolve_dtype
from sso_lightning.train import build


@dataclass(frozen=True)
class Workload:
    cfg: DictConfig
    settings: BenchSettings
    path: str  # the model directory every side loads
    tokenizer: object
    examples: list[SteeredExample]
    parameters: int
    device: torch.device

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype, ``model.dtype`` resolved."""
        return resolve_dtype(self.cfg.model.dtype, "model.dtype")

    def batches(self, count: int | None = None) -> list[list[SteeredExample]]:
        """The first ``count`` batches every side steps through (default: all): the warm-up ones,
        then the timed ones. Warm-up step i repeats timed batch i (cycling), so that each side
        meets the timed batches' shapes before the clock runs: kernels built per shape (oneDNN's
        on CPU, cuBLAS's, compiled graphs) are then built in the warm-up on every side, whatever
        order the sides run in."""
        size, steps = self.settings.batch_size, self.settings.steps
        timed = [self.examples[i * size : (i + 1) * size] for i in range(steps)]
        sequence = [timed[i % steps] for i in range(self.settings.warmup)] + timed
        return sequence[:count] if count is not None else sequence

    def timed(self, per_step: list) -> list:
        """The timed steps' entries of a per-step list (the warm-up ones dropped)."""
        return per_step[self.settings.warmup :]

    def row_lengths(self, keys: tuple[str, ...]) -> list[list[int]]:
        """Per batch, the length of each (prompt, response) row for ``keys``."""
        return [[len(p) + len(r) for p, r in sequence_pairs(batch, keys)] for batch in self.batches()]

    def tokens(self, keys: tuple[str, ...]) -> list[int]:
        """Non-padding tokens of each batch's rows for ``keys``."""
        return [sum(lengths) for lengths in self.row_lengths(keys)]

    def padded_tokens(self, keys: tuple[str, ...]) -> list[int]:
        """What each batch's rows take once right-padded to its longest row."""
        return [len(lengths) * max(lengths) for lengths in self.row_lengths(keys)]

    def model(self, **options) -> PretrainedPolicy:
        """The project's model settings (``model.*``) for the bench's weights, with ``options`` set."""
        return build(self.cfg.model, name_or_path=self.path, **options)

    def plain_model(self):
        """The same weights through plain ``from_pretrained`` in ``model.dtype`` with ``model.attn_implementation``,
        on the device; none of the project's other options."""
        model = AutoModelForCausalLM.from_pretrained(
            self.path, dtype=self.dtype, attn_implementation=self.cfg.model.attn_implementation
        )
        return model.to(self.device)

    def with_options(self, **dotted) -> Workload:
        """The same workload under a config with ``dotted`` keys (e.g. ``model.lora.enabled``) set."""
        cfg = self.cfg.copy()
        for key, value in dotted.items():
            OmegaConf.update(cfg, key, value)
        return replace(self, cfg=cfg)


def prepare(cfg: DictConfig, settings: BenchSettings, directory: Path) -> Workload:
    """The model (a shape's random weights saved into ``directory``, or the config's own) and the
    synthetic examples; WouldNotFit before anything is allocated when the model cannot fit."""
    dtype = resolve_dtype(cfg.model.dtype, "model.dtype")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if settings.shape is not None:
        config, tokenizer = settings.shape.model()
        parameters = check_fits(config, dtype, device, f"bench.shape={settings.shape.name}")
        save_random_model(config, tokenizer, directory, settings.seed)
        path = str(directory)
    else:
        path = build(cfg.model).weights()
        parameters = check_fits(AutoConfig.from_pretrained(path), dtype, device, f"model {path}")
        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.pad_token_id is None:  # as the project's loading does
            tokenizer.pad_token = tokenizer.eos_token
    examples = synthetic_examples(tokenizer, settings.lengths, settings.batch_size * settings.steps, settings.seed)
    return Workload(cfg, settings, path, tokenizer, examples, parameters, device)
