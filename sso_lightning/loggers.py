"""W&B through Lightning's WandbLogger, offline whenever no API key is configured."""

from __future__ import annotations

import netrc
import os
from urllib.parse import urlparse

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


def wandb_logger(project: str, save_dir: str, name: str | None = None, group: str | None = None, **kwargs) -> WandbLogger:
    online = os.environ.get("WANDB_MODE") == "online" or (os.environ.get("WANDB_MODE") != "offline" and wandb_has_key())
    return WandbLogger(project=project, save_dir=save_dir, name=name or None, group=group, offline=not online, **kwargs)
