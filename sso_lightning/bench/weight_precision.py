"""What each way of storing and updating the weights costs and keeps: float32 master weights,
plain bfloat16 weights, and bfloat16 weights under a compensating optimizer (docs/configuration.md#precision)."""

from __future__ import annotations

import time
from functools import partial

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sso_lightning.precision import bits


def benchmark(hidden: int = 256, layers: int = 4, steps: int = 100) -> str:
    """``python -m sso_lightning.bench.weight_precision``: what each way of storing and updating the weights
    costs and keeps, on a randomly initialised Llama (Hugging Face init, std 0.02; 8.3M
    parameters by default) fed the same seeded gradients: a fixed direction plus as much fresh
    noise every step. Per setup and learning rate:

    * bytes per parameter held by weights, gradients and optimizer state (counted from the tensors);
    * the fastest optimizer step on this machine (the one least disturbed by other load);
    * the share of weights the first step leaves bit-identical;
    * movement kept: 1 - |held - float32 run| / |float32 run - start| after ``steps`` steps, where
      the float32 run is AdamW on float32 weights from the same start, and ``held`` counts Kahan
      summation's compensation (the bfloat16 weights lag it by at most half an ulp).

    The torch-optimi rows need that package (``pip install torch-optimi``)."""
    setups = [
        ("float32 weights, torch AdamW (bf16-mixed)", torch.float32, torch.optim.AdamW),
        ("bfloat16 weights, torch AdamW", torch.bfloat16, torch.optim.AdamW),
    ]
    try:
        import optimi

        adamw = partial(optimi.AdamW, betas=(0.9, 0.999), eps=1e-8)  # torch's defaults; Kahan for bf16 weights
        setups.append(("bfloat16 weights, torch-optimi AdamW (Kahan)", torch.bfloat16, adamw))
    except ImportError:
        pass
    config = LlamaConfig(
        vocab_size=8000,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=8,
    )
    torch.manual_seed(0)
    start = [p.detach().to(torch.bfloat16).float() for p in LlamaForCausalLM(config).parameters()]
    directions = [torch.randn_like(w) for w in start]
    n = sum(w.numel() for w in start)
    lines = [
        f"{n / 1e6:.1f}M parameters, {steps} steps",
        "| lr | setup | bytes/param | fastest step (ms, CPU) | unchanged after step 1 | movement kept |",
        "|---|---|---|---|---|---|",
    ]
    for lr in (1e-5, 5e-7):
        reference = None
        for label, dtype, make in setups:
            weights = [torch.nn.Parameter(w.to(dtype, copy=True)) for w in start]
            optimizer = make(weights, lr=lr, weight_decay=0.0)
            generator = torch.Generator().manual_seed(1)
            seconds, unchanged = float("inf"), 0.0
            for step in range(steps):
                for w, d in zip(weights, directions):
                    w.grad = (d + torch.randn(w.shape, generator=generator)).to(dtype)
                before = [w.detach().clone() for w in weights] if step == 0 else None
                tick = time.perf_counter()
                optimizer.step()
                seconds = min(seconds, time.perf_counter() - tick)
                if before is not None:
                    unchanged = sum(int((bits(b) == bits(w.detach())).sum()) for b, w in zip(before, weights)) / n
            state = [optimizer.state[w] for w in weights]
            held = [
                w.detach().float() + s["kahan_comp"].float() if "kahan_comp" in s else w.detach().float()
                for w, s in zip(weights, state)
            ]
            if reference is None:  # the float32 run
                reference = held
            moved = sum(float((r - s).norm() ** 2) for r, s in zip(reference, start)) ** 0.5
            gap = sum(float((h - r).norm() ** 2) for h, r in zip(held, reference)) ** 0.5
            tensors = [*weights, *(w.grad for w in weights)]
            tensors += [t for s in state for t in s.values() if torch.is_tensor(t) and t.numel() > 1]
            size = sum(t.numel() * t.element_size() for t in tensors)
            lines.append(
                f"| {lr:g} | {label} | {size / n:.0f} | {1000 * seconds:.0f} | {unchanged:.1%} | "
                f"{1 - gap / moved:.1%} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(benchmark())
