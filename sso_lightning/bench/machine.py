"""What the figures were measured on: the machine and the library versions, for the table's header."""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    return {name: package_version(name) for name in ("torch", "transformers", "lightning", "trl", "peft")}


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def describe(device: torch.device) -> str:
    threads = torch.get_num_threads()
    cpu = f"{cpu_name()}, {os.cpu_count()} CPU cores ({threads} torch thread{'s' if threads != 1 else ''})"
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}; {cpu}"
    return f"{cpu}, no GPU"
