"""Padding-free rows and logits-free log-probs (``model.packing``) against the padded path:
the layout by hand, then log-probs, hidden states and gradients equal to the padded path's for
every packable architecture and attention, under LoRA and bf16 autocast, and no full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from sso_lightning import head_logps
from sso_lightning.data.batching import pack_pairs
from sso_lightning.errors import ConfigError
from sso_lightning.forward import PACKABLE_MODEL_TYPES, resolve_packing, score_rows
from sso_lightning.head_logps import _HeadTokenLogProbs, head_sequence_logps
from sso_lightning.packing import first_fit_decreasing, pack_rows

VOCAB = 300
SHAPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
ARCHITECTURES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
}


def tiny(arch: str, attn: str = "sdpa", dtype=torch.float32):
    config_cls, model_cls = ARCHITECTURES[arch]
    torch.manual_seed(0)
    model = model_cls(config_cls(vocab_size=VOCAB, **SHAPE)).to(dtype)
    model.config._attn_implementation = attn
    return model


def uneven_batch(num_rows: int = 7, seed: int = 1) -> dict[str, torch.Tensor]:
    """Right-padded rows with prompts of 2-19 and responses of 1-29 tokens."""
    g = torch.Generator().manual_seed(seed)

    def ids(low, high):
        return torch.randint(1, VOCAB, (int(torch.randint(low, high, (1,), generator=g)),), generator=g).tolist()

    return pack_pairs([(ids(2, 20), ids(1, 30)) for _ in range(num_rows)], pad_id=0)


def run(model, batch, scored: int, packing: bool):
    """(sums, masked hidden of the remaining rows, gradients) of one forward and backward."""
    model.zero_grad()
    out = score_rows(model, batch, scored, hidden=True, packing=packing)
    rest = out.hidden * batch["response_mask"][scored:, :, None]
    weights = torch.arange(1, scored + 1, dtype=out.sums.dtype)  # every row its own gradient weight
    ((out.sums * weights).sum() + rest.pow(2).sum()).backward()
    return (
        out.sums.detach(),
        out.lengths,
        rest.detach(),
        [p.grad.clone() for p in model.parameters() if p.requires_grad],
    )


def assert_same(a, b, atol=1e-5, rtol=1e-5):
    for x, y in zip(a[:3], b[:3]):
        torch.testing.assert_close(x, y, atol=atol, rtol=rtol)
    assert len(a[3]) == len(b[3]) > 0
    for x, y in zip(a[3], b[3]):
        torch.testing.assert_close(x, y, atol=atol, rtol=rtol)


# ---------------------------------------------------------------- layout


def test_first_fit_decreasing_never_exceeds_the_capacity():
    assert first_fit_decreasing([3, 1, 2], 3) == [(0, 0), (1, 2), (1, 0)]
    lengths = [5, 9, 2, 7, 1, 3, 8]
    place = first_fit_decreasing(lengths, 9)
    ends = {}
    for (row, offset), n in zip(place, lengths):
        ends.setdefault(row, []).append((offset, offset + n))
    for spans in ends.values():
        spans.sort()
        assert spans[-1][1] <= 9 and all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def test_packed_rows_by_hand():
    """Rows of 3, 1 and 2 tokens: [a a a], [c c b] with positions restarting and a block-causal mask."""
    ids = torch.tensor([[11, 12, 13], [21, 0, 0], [31, 32, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]])
    packed = pack_rows(ids, mask, "sdpa")
    assert packed.input_ids.tolist() == [[11, 12, 13], [31, 32, 21]]
    assert packed.position_ids.tolist() == [[0, 1, 2], [0, 1, 0]]
    assert packed.index.tolist() == [[0, 1, 2], [5, -1, -1], [3, 4, -1]]
    assert packed.attention_mask[:, 0].int().tolist() == [
        [[1, 0, 0], [1, 1, 0], [1, 1, 1]],
        [[1, 0, 0], [1, 1, 0], [0, 0, 1]],
    ]
    varlen = pack_rows(ids, mask, "flash_attention_2")
    assert varlen.input_ids.tolist() == [[11, 12, 13, 21, 31, 32]]
    assert varlen.position_ids.tolist() == [[0, 1, 2, 0, 0, 1]]
    assert varlen.attention_mask is None and varlen.index.tolist() == [[0, 1, 2], [3, -1, -1], [4, 5, -1]]


def test_tail_padding_attends_only_to_itself():
    ids, mask = torch.tensor([[1, 2, 3], [4, 0, 0]]), torch.tensor([[1, 1, 1], [1, 0, 0]])
    packed = pack_rows(ids, mask, "sdpa")  # row 1 holds one token and two padding positions
    assert packed.attention_mask[1, 0].int().tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    eager = pack_rows(ids, mask, "eager").attention_mask
    assert eager.dtype == torch.float32 and (eager == 0).equal(packed.attention_mask)


# ---------------------------------------------------------------- equal to the padded path


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_log_probs_hidden_states_and_gradients_equal_the_padded_path(arch, attn):
    model, batch = tiny(arch, attn), uneven_batch()
    assert_same(run(model, batch, 5, packing=True), run(model, batch, 5, packing=False))


def test_packing_uses_fewer_positions_and_keeps_sequences_apart():
    """A bug that lets packed sequences see each other (no mask) changes the log-probs."""
    model = tiny("llama")
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(1, VOCAB, (n,), generator=g).tolist()
    batch = pack_pairs([(ids(8), ids(22)), *((ids(3), ids(4)) for _ in range(6))], pad_id=0)  # 30 + 6 x 7 tokens
    leaky = pack_rows(batch["input_ids"], batch["attention_mask"], "sdpa")
    assert leaky.input_ids.shape == (3, 30) and batch["input_ids"].shape == (7, 30)
    with torch.no_grad():
        states = model.get_decoder()(input_ids=leaky.input_ids, position_ids=leaky.position_ids).last_hidden_state
        sums, _ = head_sequence_logps(
            states.reshape(-1, SHAPE["hidden_size"]),
            leaky.index,
            batch["input_ids"],
            batch["response_mask"],
            model.get_output_embeddings(),
        )
        padded = score_rows(model, batch, 7, hidden=False, packing=False).sums
    assert (sums - padded).abs().max() > 1e-3


def test_lora_adapters_get_the_padded_gradients():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny("llama"), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, p in model.named_parameters():  # B starts at zero: move it so every adapter has a gradient
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    batch = uneven_batch()
    packed, padded = run(model, batch, 5, packing=True), run(model, batch, 5, packing=False)
    assert len(packed[3]) == sum(1 for n, _ in model.named_parameters() if "lora_" in n)
    assert_same(packed, padded)
    with model.disable_adapter():  # the LoRA reference: the base model through the same packed path
        torch.testing.assert_close(
            score_rows(model, batch, 7, False, True).sums, score_rows(model, batch, 7, False, False).sums
        )


def test_bf16_autocast_keeps_float32_gradients_close_to_the_padded_path():
    model, batch = tiny("llama"), uneven_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        packed, padded = run(model, batch, 5, packing=True), run(model, batch, 5, packing=False)
    assert all(g.dtype == torch.float32 for g in packed[3])
    torch.testing.assert_close(packed[0], padded[0], atol=0.5, rtol=2e-2)
    for x, y in zip(packed[3], padded[3]):
        assert F.cosine_similarity(x.flatten(), y.flatten(), dim=0) > 0.99


# ---------------------------------------------------------------- the head without full logits


def test_head_log_probs_gradcheck():
    torch.manual_seed(0)
    hidden = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(11, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 11, (6,))
    fn = lambda h, w, b: _HeadTokenLogProbs.apply(h, w, b, labels, 4, torch.float64)
    assert torch.autograd.gradcheck(fn, (hidden, weight, bias))
    expected = F.linear(hidden, weight, bias).log_softmax(-1).gather(-1, labels[:, None]).squeeze(-1)
    torch.testing.assert_close(fn(hidden, weight, bias), expected)


class LargestLogits(TorchDispatchMode):
    """The largest tensor any op makes whose last dimension is the vocabulary, other than a weight
    (or its transpose)."""

    def __init__(self, vocab: int, hidden: int):
        super().__init__()
        self.vocab, self.hidden, self.largest = vocab, hidden, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == self.vocab:
                if tuple(t.shape) not in ((self.vocab, self.hidden), (self.hidden, self.vocab)):
                    self.largest = max(self.largest, t.numel())
        return out


def test_no_full_logits_in_forward_or_backward(monkeypatch):
    chunk = 8
    monkeypatch.setattr(head_logps, "CHUNK_ELEMENTS", chunk * VOCAB)
    model, batch = tiny("llama"), uneven_batch()
    with LargestLogits(VOCAB, SHAPE["hidden_size"]) as tracker:
        score_rows(model, batch, 7, hidden=False, packing=True).sums.sum().backward()
    assert 0 < tracker.largest <= chunk * VOCAB
    with LargestLogits(VOCAB, SHAPE["hidden_size"]) as control:  # the tracker sees the padded path's logits
        score_rows(model, batch, 7, hidden=False, packing=False).sums.sum().backward()
    assert control.largest >= batch["input_ids"].numel() * VOCAB


# ---------------------------------------------------------------- model.packing


def test_packing_option():
    llama = tiny("llama")
    assert resolve_packing("auto", llama) and resolve_packing(True, llama) and not resolve_packing(False, llama)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2))
    assert not resolve_packing("auto", gpt2)
    with pytest.raises(ConfigError, match=r"^model.packing=true is not exact for model type gpt2 \(packable: llama"):
        resolve_packing("true", gpt2)
    with pytest.raises(ConfigError, match=r"^model.packing=maybe is not valid \(valid: auto, true, false\)$"):
        resolve_packing("maybe", llama)
    llama.config._attn_implementation = "flex_attention"
    assert not resolve_packing("auto", llama)
    assert set(PACKABLE_MODEL_TYPES) == set(ARCHITECTURES)  # every packable type is checked above
