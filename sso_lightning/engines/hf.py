"""``generation.backend=hf``: Hugging Face ``generate`` on the model itself, which is always current."""

from __future__ import annotations

from sso_lightning.generation import generate


class Engine:
    def generate(self, model, tokenizer, prompts, sampling, on_batch=None):
        return generate(model, tokenizer, prompts, sampling, on_batch=on_batch)

    def check(self, model) -> None:
        pass

    def close(self) -> None:
        pass
