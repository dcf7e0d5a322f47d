"""Loading a policy and its tokenizer through ``from_pretrained`` (hub id or local dir)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sso_lightning.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class PretrainedPolicy:
    """A causal LM by hub id or directory. ``dtype: auto`` is bfloat16 on GPU, float32 on CPU."""

    name_or_path: str
    dtype: str = "auto"
    attn_implementation: str = "sdpa"

    def load(self):
        dtype = self.resolve_dtype()
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.name_or_path)
            model = AutoModelForCausalLM.from_pretrained(
                self.name_or_path, dtype=dtype, attn_implementation=self.attn_implementation
            )
        except OSError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"model.name_or_path={self.name_or_path}: could not be loaded ({first})") from None
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model, tokenizer

    def resolve_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if torch.cuda.is_available() else torch.float32
        if self.dtype not in DTYPES:
            raise ConfigError(f"model.dtype={self.dtype} is not valid (valid: auto, {', '.join(DTYPES)})")
        return DTYPES[self.dtype]
