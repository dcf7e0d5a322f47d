"""W&B through Lightning's WandbLogger, offline whenever no API key is configured."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:
    from lightning.pytorch.loggers import WandbLogger


def wandb_has_key() -> bool:
    """A key in WANDB_API_KEY or in the netrc entry `wandb login` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_online() -> bool:
    return os.environ.get("WANDB_MODE") == "online" or (
        os.environ.get("WANDB_MODE") not in ("offline", "disabled") and wandb_has_key()
    )


def sweep_group(sweep_dir: str | Path) -> str:
    """The W&B group of a Hydra multirun: its directory's last two parts (``<date>/<time>``
    by default), so every job of one sweep, and its report, share it."""
    return "/".join(Path(sweep_dir).resolve().parts[-2:])


def multirun_dir() -> Path | None:
    """The sweep directory when this process runs a job of a Hydra multirun, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().sweep.dir)


def wandb_logger(
    project: str, save_dir: str, name: str | None = None, group: str | None = None, **kwargs
) -> WandbLogger:
    """``group`` defaults to the sweep's group under ``-m`` (see ``sweep_group``)."""
    # imported here: the report imports this module and needs no Lightning
    from lightning.pytorch.loggers import WandbLogger

    if group is None and (sweep := multirun_dir()) is not None:
        group = sweep_group(sweep)
    return WandbLogger(
        project=project, save_dir=save_dir, name=name or None, group=group, offline=not wandb_online(), **kwargs
    )
