"""Loading a policy and its tokenizer through ``from_pretrained`` (hub id or local dir),
the model options that apply to every policy, and running a model for inference."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sso_lightning.errors import ConfigError
from sso_lightning.forward import TrainingForward, resolve_packing, training_forward

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str, option: str) -> torch.dtype:
    """``auto`` is bfloat16 on GPU, float32 on CPU; ``option`` names the setting in errors.

    bfloat16 suits weights that do not train (judges, a frozen LoRA base: peft keeps the adapters
    float32); trained weights need float32, as AdamW's small steps round away in bfloat16. So the
    model configs say ``float32``, and ``sso_lightning.precision`` warns when updates would be lost."""
    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"{option}={dtype} is not valid (valid: auto, {', '.join(DTYPES)})")
    return DTYPES[dtype]


def load_failure(option: str, name_or_path: str, error: Exception) -> ConfigError:
    """One line for a model that could not be loaded: the option, the path, the first error line."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ConfigError(f"{option}={name_or_path}: could not be loaded ({first})")


@dataclass
class LoraSettings:
    """LoRA through peft. With it on, only the adapters train, and the base model with
    adapters disabled serves as a fixed reference without a second copy in memory."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Any = "all-linear"  # a list of module names, or peft's "all-linear"

    def apply(self, model):
        from peft import LoraConfig, get_peft_model

        if self.r < 1:
            raise ConfigError(f"model.lora.r must be >= 1 (got {self.r})")
        targets = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        config = LoraConfig(
            r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets, task_type="CAUSAL_LM"
        )
        try:
            return get_peft_model(model, config)
        except ValueError as e:
            raise ConfigError(f"model.lora.target_modules={targets}: {' '.join(str(e).split())}") from None


@contextmanager
def inference(model) -> Iterator[None]:
    """Eval mode without gradients for generation and scoring; the training mode comes back after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def has_adapters(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


ATTENTION = ("sdpa", "eager", "flash_attention_2")


@dataclass
class PretrainedPolicy:
    """A causal LM by hub id or directory, with the options every policy takes. ``dtype: auto``
    is bfloat16 on GPU, float32 on CPU. ``compile`` compiles the training forward only
    (``forward.training_forward``); ``packing`` runs training and scoring on padding-free rows
    where that is exact (``forward``). A subclass may decide where the weights come from (``weights``);
    the loading is this class's alone."""

    name_or_path: str | None = None
    dtype: str = "auto"
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    compile: bool = False
    packing: Any = "auto"  # auto | true | false (forward.resolve_packing)
    lora: LoraSettings = field(default_factory=LoraSettings)

    def weights(self) -> str:
        """The hub id or directory to load."""
        if not self.name_or_path:
            raise ConfigError("model.name_or_path is not set (a hub id or a local directory)")
        return self.name_or_path

    def packs(self, model) -> bool:
        """Whether training steps and scoring run on packed rows (``model.packing``)."""
        return resolve_packing(self.packing, model)

    def training_forward(self, model) -> TrainingForward:
        return training_forward(model, self.compile, packing=self.packs(model))

    def load(self, path_option: str = "model.name_or_path"):
        """(model, tokenizer); ``path_option`` names the setting that chose the weights in errors."""
        dtype = resolve_dtype(self.dtype, "model.dtype")
        if self.attn_implementation not in ATTENTION:
            raise ConfigError(
                f"model.attn_implementation={self.attn_implementation} is not valid (valid: {', '.join(ATTENTION)})"
            )
        if self.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise ConfigError(
                "model.attn_implementation=flash_attention_2 needs the flash-attn package (GPU only): "
                "pip install -e '.[flash-attn]', or use model.attn_implementation=sdpa"
            )
        path = self.weights()
        local = path.startswith(("/", "./", "../", "~"))  # a hub id is "name" or "org/name"
        if local and not Path(path).expanduser().is_dir():
            raise ConfigError(f"{path_option}={path}: no such directory (a local model directory, or a hub id)")
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, attn_implementation=self.attn_implementation
            )
        except (OSError, ValueError) as e:
            raise load_failure(path_option, path, e) from None
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if self.lora.enabled:
                model.enable_input_require_grads()  # checkpointed blocks need a grad-requiring input
        if self.lora.enabled:
            model = self.lora.apply(model)
        return model, tokenizer
