"""What the measured workloads would print, held back: the bench's stdout is its table alone.
Their stdout goes to stderr; Hugging Face's progress bars and info lines, and every warning, are
silenced (they concern the bench's synthetic set-up, not the user's)."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout

import datasets
from transformers.utils import logging as hf_logging


@contextmanager
def quiet() -> Iterator[None]:
    verbosity = hf_logging.get_verbosity()
    tqdm_disable = os.environ.get("TQDM_DISABLE")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    os.environ["TQDM_DISABLE"] = "1"  # TRL's own bars read it
    try:
        with redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
        datasets.enable_progress_bars()
        if tqdm_disable is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = tqdm_disable
