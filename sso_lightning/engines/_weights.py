"""The policy's current weights as a plain (non-peft) model names them, for an engine that keeps
its own copy. Under LoRA the adapters are folded in, out of place (W + ΔW per adapted layer), so
the training model and its adapter-disabled reference stay bit-identical (peft's in-place
``merge_adapter`` / ``unmerge_adapter`` would round the frozen base each time)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import torch

from sso_lightning.models import has_adapters

ADAPTER_WEIGHT = re.compile(r"\.lora_[A-Za-z_]+\.")  # lora_A, lora_B, lora_embedding_*, lora_magnitude_vector


def plain_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of ``model``'s state dict; with peft adapters, merged, under the base model's names."""
    if not has_adapters(model):
        yield from model.state_dict().items()
        return
    base = model.get_base_model()
    adapted = {
        f"{name}.base_layer.weight": module
        for name, module in base.named_modules()
        if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer")
    }
    with torch.no_grad():
        for name, tensor in base.state_dict().items():
            if ADAPTER_WEIGHT.search(name):
                continue
            layer = adapted.get(name)
            if layer is not None and not layer.merged and not layer.disable_adapters:
                for adapter in layer.active_adapters:
                    if adapter in layer.lora_A:
                        tensor = tensor + layer.get_delta_weight(adapter).to(tensor.dtype)
            yield name.replace(".base_layer.", "."), tensor
