"""``python -m sso_lightning.bench [overrides]``: the benchmark (docs/performance.md).

It composes conf/bench.yaml (the project's config plus ``bench.*``) with the overrides, checks the
bench's options, prepares one model and one set of synthetic examples, runs the chosen rows and
prints a header and a Markdown table on stdout; progress goes to stderr. ``bench.json=<path>``
also writes the same data as JSON. A bad option stops with one line and exit code 2 before any
work; a model that cannot fit the machine is reported in one line, exit code 0.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig

from sso_lightning.__main__ import CONFIG_DIR, check_group_overrides
from sso_lightning.atomic import write_atomic
from sso_lightning.bench import machine
from sso_lightning.bench.fit import WouldNotFit
from sso_lightning.bench.quiet import quiet
from sso_lightning.bench.rows import ROW_BUILDERS
from sso_lightning.bench.settings import BenchSettings, read_settings
from sso_lightning.bench.table import Row, markdown
from sso_lightning.bench.workload import Workload, prepare
from sso_lightning.errors import ConfigError
from sso_lightning.train import build

LEGEND = (
    "Figures: median [min–max] over the timed steps (warm-up excluded); tok/s counts non-padding tokens; "
    "ratio = ours / baseline. Peak memory: on CPU the resident high-water mark (VmHWM) after the steps minus "
    "the resident size (VmRSS) right before them, in a fresh process per measurement; on GPU "
    "max_memory_allocated minus memory_allocated before."
)


def compose_config(overrides: list[str]) -> DictConfig:
    """conf/bench.yaml with ``overrides``; Hydra's own errors become one-line ConfigErrors."""
    check_group_overrides(overrides)
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose(config_name="bench", overrides=overrides)
    except HydraException as e:
        raise ConfigError(" ".join(str(e).split())) from None


def header(work: Workload) -> dict:
    settings = work.settings
    sequences = {
        name: build(node).required_sequences()
        for name, node in (("pbaa", work.cfg.bench.pbaa_loss), ("sso", work.cfg.loss))
    }
    per_step = {
        name: {
            "rows": len(keys) * settings.batch_size,
            "tokens": statistics.median(work.timed(work.tokens(keys))),
            "padded": statistics.median(work.timed(work.padded_tokens(keys))),
        }
        for name, keys in sequences.items()
    }
    return {
        "machine": machine.describe(work.device),
        "versions": machine.versions(),
        "shape": settings.shape.name if settings.shape is not None else None,
        "model": work.path if settings.shape is None else f"random-weight Llama ({settings.shape.name})",
        "parameters": work.parameters,
        "batch_size": settings.batch_size,
        "warmup": settings.warmup,
        "steps": settings.steps,
        "per_step": per_step,
    }


def header_lines(head: dict) -> list[str]:
    versions = ", ".join(f"{name} {v}" for name, v in head["versions"].items())
    steps = "; ".join(
        f"{name.upper()} {s['rows']} rows, {s['tokens']:,.0f} tokens ({s['padded']:,.0f} padded)"
        for name, s in head["per_step"].items()
    )
    return [
        f"machine: {head['machine']}; {versions}",
        f"model: {head['model']}, {head['parameters'] / 1e6:,.1f}M parameters; batch {head['batch_size']} examples; "
        f"{head['warmup']} warm-up + {head['steps']} timed step{'s' if head['steps'] != 1 else ''}; "
        f"per step (median): {steps}",
    ]


def run(cfg: DictConfig, settings: BenchSettings) -> tuple[dict, list[Row]]:
    threads = torch.get_num_threads()
    settings.use_threads()
    try:
        with tempfile.TemporaryDirectory() as directory, quiet():
            work = prepare(cfg, settings, Path(directory))
            rows = [row for name in settings.rows for row in ROW_BUILDERS[name](work)]
            return header(work), rows
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> None:
    try:
        cfg = compose_config(sys.argv[1:] if argv is None else argv)
        settings = read_settings(cfg)
        head, rows = run(cfg, settings)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except WouldNotFit as e:
        print(e)
        return
    print("\n".join([*header_lines(head), "", markdown(rows), "", LEGEND]))
    if settings.json is not None:
        data = {**head, "legend": LEGEND, "rows": [row.as_dict() for row in rows]}
        write_atomic(settings.json, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
