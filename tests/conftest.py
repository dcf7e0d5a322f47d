"""Shared settings: a tiny, fast toy world so end-to-end runs take seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A reduced budget for the default config: smaller bootstrap, 2 iterations ...
TINY_RUN = ["logger=csv", "model.sft.num_examples=1500", "model.sft.epochs=2", "trainer.max_epochs=2"]
# ... and fewer toy prompts.
TINY = [*TINY_RUN, "data.prompts.num_train=48", "data.prompts.num_eval=24"]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def cli(cache_dir):
    """Run ``python -m sso_lightning`` like a user does; returns the CompletedProcess."""

    def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "SSO_LIGHTNING_CACHE": str(cache_dir), "WANDB_MODE": "offline"}
        return subprocess.run(
            [sys.executable, "-m", "sso_lightning", *args], cwd=cwd or ROOT, env=env, capture_output=True, text=True,
            timeout=600,
        )

    return run
