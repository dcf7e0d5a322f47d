"""Whether a model's training state can fit the device at all, decided from its config alone: the
parameters are counted on the meta device, which allocates nothing. A shape that cannot fit is
reported in one line instead of failing deep inside an allocation."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

# weights, TRL's reference copy (its default row holds one), gradients and AdamW's two moments
COPIES = 5


class WouldNotFit(Exception):
    """The one line saying which model would not fit and why."""


def parameter_count(config) -> int:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(config, dtype: torch.dtype, device: torch.device, model: str) -> int:
    """The parameter count, or WouldNotFit when the training state alone exceeds the free memory."""
    params = parameter_count(config)
    need, have = params * COPIES * dtype.itemsize, available_bytes(device)
    if need > have:
        raise WouldNotFit(
            f"{model} would not fit: its {params / 1e9:.2f}B parameters need at least {need / 2**30:.0f} GiB "
            f"({COPIES} copies in {str(dtype).removeprefix('torch.')}: weights, TRL's reference, gradients, AdamW's "
            f"two moments; activations not counted), and this {device.type.upper()} has "
            f"{have / 2**30:.1f} GiB available"
        )
    return params
