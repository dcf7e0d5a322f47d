"""Model FLOPs utilisation of a training step on a GPU: the model FLOPs of the step's non-padding
tokens per second, over the GPU's peak dense bf16 FLOP/s.

Model FLOPs per row of length l (PaLM's convention, appendix B): 6·N·l for the matrix
multiplications of forward and backward, N the parameters the tokens pass through (the input
embedding is a lookup and is left out, unless it is tied to the output head), plus 12·L·d·l² for
attention (L layers, width d). Padding and recomputation (gradient checkpointing) do not count:
they are work, not model FLOPs."""

from __future__ import annotations

from collections.abc import Sequence

# peak dense bf16 tensor FLOP/s by device name, the more specific names first
PEAK_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("GH200", 989e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
)


def peak_bf16_flops(device_name: str) -> float | None:
    for name, flops in PEAK_BF16:
        if name in device_name:
            return flops
    return None


def matmul_parameters(config, parameters: int) -> int:
    """N: every parameter but an untied input embedding."""
    tied = getattr(config, "tie_word_embeddings", False)
    return parameters if tied else parameters - config.vocab_size * config.hidden_size


def step_flops(config, parameters: int, row_lengths: Sequence[int]) -> float:
    n = matmul_parameters(config, parameters)
    layers, width = config.num_hidden_layers, config.hidden_size
    return sum(6 * n * length + 12 * layers * width * length**2 for length in row_lengths)
