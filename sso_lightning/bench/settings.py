"""The bench's own options (``bench.*`` in conf/bench.yaml), checked before any work: a bad one stops
with one line that names it and what is valid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig

from sso_lightning.bench.shapes import SHAPES, Lengths, Shape
from sso_lightning.errors import ConfigError

ROWS = ("pbaa", "sso", "scoring", "generation", "vllm", "memory", "mfu")
# the precisions the bare loop can mirror (autocast or not); the PBAA rows set their own
PRECISIONS = ("32-true", "bf16-mixed")
UNSHAPED = "mid"  # without bench.shape: the config's model, with these lengths and step counts


@dataclass(frozen=True)
class BenchSettings:
    shape: Shape | None  # None: the model the config names
    lengths: Lengths
    batch_size: int
    warmup: int
    steps: int
    max_new_tokens: int
    rows: tuple[str, ...]
    json: Path | None
    seed: int
    threads: int | None  # torch's intra-op threads; None: torch's default

    @property
    def batches(self) -> int:
        """Batches every side steps through: the warm-up ones, then the timed ones."""
        return self.warmup + self.steps

    def use_threads(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)


def count(node: DictConfig, name: str, least: int, default: int | None = None) -> int:
    """``bench.<name>``, an integer >= ``least``; null takes ``default`` where there is one."""
    value = node[name] if node[name] is not None or default is None else default
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        shapes_own = ", or null for the shape's own" if default is not None else ""
        raise ConfigError(f"bench.{name} must be an integer >= {least}{shapes_own} (got {value})")
    return value


def read_settings(cfg: DictConfig) -> BenchSettings:
    node = cfg.bench
    if node.shape is not None and (not isinstance(node.shape, str) or node.shape not in SHAPES):
        valid = ", ".join(SHAPES)
        raise ConfigError(f"bench.shape={node.shape} is not valid (valid: {valid}, or null for the config's model)")
    shape = SHAPES[node.shape] if node.shape is not None else None
    defaults = shape or SHAPES[UNSHAPED]
    if not isinstance(node.rows, ListConfig) or not node.rows or any(row not in ROWS for row in node.rows):
        raise ConfigError(f"bench.rows={node.rows} must be a non-empty list of: {', '.join(ROWS)}")
    precision = str(cfg.trainer.precision)
    if precision not in PRECISIONS:
        raise ConfigError(
            f"trainer.precision={precision}: the bench runs {' or '.join(PRECISIONS)} (those the bare loop mirrors)"
        )
    return BenchSettings(
        shape=shape,
        lengths=defaults.lengths,
        batch_size=count(node, "batch_size", 1, defaults.batch_size),
        warmup=count(node, "warmup", 0, defaults.warmup),
        steps=count(node, "steps", 1, defaults.steps),
        max_new_tokens=count(node, "max_new_tokens", 1, defaults.lengths.max_new_tokens),
        rows=tuple(node.rows),
        json=Path(node.json) if node.json is not None else None,
        seed=count(node, "seed", 0),
        threads=count(node, "threads", 1) if node.threads is not None else None,
    )
