"""Generation engines: what samples answers from a model, for regeneration, the two-stage
generator, evaluation and the principle writer when it uses the policy.

``generation.backend`` names a module of this package; each defines ``Engine(**options)`` with

* ``generate(model, tokenizer, prompts, sampling, on_batch)``: one ``Response`` per prompt, in
  order, from ``model``'s current weights (token ids kept as generated, EOS included when reached);
* ``check(model)``: refuse (``ConfigError``) a model the engine cannot run, before any work;
* ``close()``: free what the engine holds; the run calls it once at the end.

An engine lives for the run, so one that keeps its own copy of the weights (vLLM) starts once and
brings them up to date at every call. Its options are ``generation.engines.<backend>``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from sso_lightning.errors import ConfigError
from sso_lightning.generation import Response, Sampling


class Engine(Protocol):
    def generate(
        self,
        model,
        tokenizer,
        prompts: Sequence[Sequence[int]],
        sampling: Sampling,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[Response]: ...

    def check(self, model) -> None: ...

    def close(self) -> None: ...


def backends() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load_engine(backend: str, options: Mapping[str, Any] | None = None) -> Engine:
    if backend not in backends():
        raise ConfigError(f"generation.backend={backend} is not valid (valid: {', '.join(backends())})")
    module = importlib.import_module(f"{__name__}.{backend}")
    return module.Engine(**dict(options or {}))


@dataclass(frozen=True)
class Generation(Sampling):
    """``generation``: how answers are sampled (``sampling()``) and by which engine (``engine()``)."""

    backend: str = "hf"
    engines: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # options per backend

    def sampling(self) -> Sampling:
        return Sampling(**{f.name: getattr(self, f.name) for f in fields(Sampling)})

    def engine(self) -> Engine:
        return load_engine(self.backend, self.engines.get(self.backend))
