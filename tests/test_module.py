"""The LightningModule: one forward per step, the loss of every variant equals the objective
applied to log-probs computed sequence by sequence, and training moves the parameters."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import steered_world
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import DataLoader
from transformers import LlamaForCausalLM

from sso_lightning.__main__ import CONFIG_DIR
from sso_lightning.data.batching import Collator
from sso_lightning.forward import training_forward
from sso_lightning.losses import DPO, IPO, SeqLogps, SimPO, SSOObjective
from sso_lightning.module import SSOModule
from sso_lightning.sequences import SEQUENCE_KEYS

VARIANTS = {
    "sso": SSOObjective(DPO(0.1)),
    "pbaa": SSOObjective(DPO(0.1), g=0, plus=False, minus="off", weight=False),
    "w/o W": SSOObjective(DPO(0.1), weight=False),
    "w/o g": SSOObjective(DPO(0.1), g=0, plus=False, minus="off"),
    "L+ only": SSOObjective(DPO(0.1), minus="off"),
    "L- only": SSOObjective(DPO(0.1), plus=False),
    "naive L-": SSOObjective(DPO(0.1), minus="naive"),
    "ipo": SSOObjective(IPO(0.1)),
    "simpo": SSOObjective(SimPO(), policy_sft=0.5),
}


@pytest.fixture(scope="module")
def world():
    return steered_world(8, query_digits=(2, 5), answer_digits=(1, 6))


def sequence_by_sequence(model, example, key) -> SeqLogps:
    prompt_key, response_key = key.split("|")
    prompt, response = example.prompt.ids[prompt_key], example.responses[response_key].ids
    ids = torch.tensor([list(prompt) + list(response)])
    logps = model(input_ids=ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    policy = logps[len(prompt) - 1 :].sum()
    return SeqLogps(policy, torch.tensor(example.ref_logps[key]), torch.tensor(float(len(response))))


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_step_is_one_forward_and_equals_the_objective(world, name, packing):
    tokenizer, config, examples = world
    objective = VARIANTS[name]
    torch.manual_seed(0)
    policy = LlamaForCausalLM(config)
    forward = training_forward(policy, packing=packing)
    module = SSOModule(policy, tokenizer, objective, lambda params: torch.optim.SGD(params, lr=0.1), forward=forward)
    module.log_dict = lambda *a, **k: None
    calls, full_logits = [], []
    module.policy.get_decoder().register_forward_hook(lambda *_: calls.append(1))
    module.policy.get_output_embeddings().register_forward_hook(lambda *_: full_logits.append(1))
    batch = Collator(objective.required_sequences(), tokenizer.pad_token_id)(examples)
    loss = module.training_step(batch, 0)
    assert len(calls) == 1
    assert len(full_logits) == (0 if packing else 1)  # packed: the head runs only at response positions
    assert batch["input_ids"].shape[0] == len(objective.required_sequences()) * len(examples)

    stacked = {}
    for key in objective.required_sequences():
        parts = [sequence_by_sequence(module.policy, ex, key) for ex in examples]
        stacked[key] = SeqLogps(*(torch.stack([getattr(p, f) for p in parts]) for f in SeqLogps._fields))
    expected = objective(stacked)["loss"]
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    loss.backward()
    grads = [p.grad for p in module.policy.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_gradient_of_a_batch_equals_the_mean_of_single_example_gradients(world):
    """Gradient accumulation 1x8 equals 8x1: every term is a per-example mean."""
    tokenizer, config, examples = world
    objective = VARIANTS["sso"]
    collate = Collator(objective.required_sequences(), tokenizer.pad_token_id)
    torch.manual_seed(0)
    module = SSOModule(LlamaForCausalLM(config), tokenizer, objective, lambda params: None)
    module.log_dict = lambda *a, **k: None

    def grads(batches):
        module.policy.zero_grad()
        for batch in batches:
            (module.training_step(batch, 0) / len(batches)).backward()
        return [p.grad.clone() for p in module.policy.parameters()]

    whole = grads([collate(examples)])
    accumulated = grads([collate([ex]) for ex in examples])
    for a, b in zip(whole, accumulated):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_lightning_fit_moves_every_trainable_parameter(world):
    """Weight decay off: AdamW's decay would move every parameter even with a zero gradient."""
    tokenizer, config, examples = world
    objective = VARIANTS["sso"]
    torch.manual_seed(0)
    policy = LlamaForCausalLM(config)
    before = [p.detach().clone() for p in policy.parameters()]
    optimizer = lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    module = SSOModule(policy, tokenizer, objective, optimizer)
    loader = DataLoader(
        examples, batch_size=4, collate_fn=Collator(objective.required_sequences(), tokenizer.pad_token_id)
    )
    L.Trainer(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    ).fit(module, loader)
    assert all(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))


@pytest.mark.parametrize("name", ["sso", "pbaa", "ipo", "simpo"])
def test_steps_on_a_fixed_batch_lower_its_loss(world, name):
    """A few plain AdamW steps (weight decay off) on one batch: the objective must go down,
    so it trains the policy toward its own minimum (a detached or sign-flipped loss would not)."""
    tokenizer, config, examples = world
    objective = VARIANTS[name]
    torch.manual_seed(0)
    module = SSOModule(LlamaForCausalLM(config), tokenizer, objective, lambda params: None)
    module.log_dict = lambda *a, **k: None
    batch = Collator(objective.required_sequences(), tokenizer.pad_token_id)(examples)
    optimizer = torch.optim.AdamW(module.policy.parameters(), lr=1e-3, weight_decay=0.0)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = module.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(module.training_step(batch, 0).item())
    assert losses[-1] < losses[0] - 0.01 * abs(losses[0]), losses


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_compiled_training_forward_gives_the_same_loss(world, packing):
    tokenizer, config, examples = world
    objective = VARIANTS["sso"]
    batch = Collator(objective.required_sequences(), tokenizer.pad_token_id)(examples)
    torch.manual_seed(0)
    policy = LlamaForCausalLM(config)
    plain = SSOModule(
        policy, tokenizer, objective, lambda params: None, forward=training_forward(policy, packing=packing)
    )
    forward = training_forward(policy, compile=True, backend="aot_eager", packing=packing)
    compiled = SSOModule(policy, tokenizer, objective, lambda params: None, forward=forward)
    for module in (plain, compiled):
        module.log_dict = lambda *a, **k: None
    torch.testing.assert_close(compiled.training_step(batch, 0), plain.training_step(batch, 0), atol=1e-5, rtol=1e-5)
    assert list(compiled.state_dict()) == list(plain.state_dict()) and all(
        k.startswith("policy.") for k in plain.state_dict()
    )


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_gradient_checkpointing_gives_the_same_gradients(world, tmp_path, packing):
    from sso_lightning.models import PretrainedPolicy

    tokenizer, config, examples = world
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    objective = VARIANTS["sso"]
    batch = Collator(objective.required_sequences(), tokenizer.pad_token_id)(examples)
    grads = []
    for checkpointing in (False, True):
        policy, tok = PretrainedPolicy(str(tmp_path), dtype="float32", gradient_checkpointing=checkpointing).load()
        assert policy.is_gradient_checkpointing == checkpointing
        module = SSOModule(
            policy, tok, objective, lambda params: None, forward=training_forward(policy, packing=packing)
        )
        module.log_dict = lambda *a, **k: None
        module.training_step(batch, 0).backward()
        grads.append([p.grad for p in policy.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


# Each named variant (conf/variant) against docs/method.md's formula for it, written out here by hand.
def dpo(w: SeqLogps, l: SeqLogps, beta: float) -> torch.Tensor:
    return -torch.nn.functional.logsigmoid(beta * ((w.policy - w.ref) - (l.policy - l.ref)))


def ipo(w: SeqLogps, l: SeqLogps, beta: float) -> torch.Tensor:
    h = (w.policy - w.ref) / w.length - (l.policy - l.ref) / l.length
    return (h - 1 / (2 * beta)) ** 2


def nll(s: SeqLogps) -> torch.Tensor:
    return -s.policy / s.length


def paper_formula(variant: str, s: dict, base, gamma: float, g: float, alpha: float) -> dict[str, torch.Tensor]:
    """docs/method.md: P = l(x,y+,y-); L+ = l(x+,y+,y-) + gamma*sft(x+,y+); L- = l(x-,yo,y+) + gamma*sft(x-,yo)
    (naive: l(x-,y-,y+) + gamma*sft(x-,y-)); W = sigmoid(-(alpha*a(x,y+) + (1-alpha)*a(x,y-)))."""
    policy = base(s["x|y+"], s["x|y-"])
    plus = lambda: base(s["x+|y+"], s["x+|y-"]) + gamma * nll(s["x+|y+"])
    minus = lambda: base(s["x-|yo"], s["x-|y+"]) + gamma * nll(s["x-|yo"])
    naive = lambda: base(s["x-|y-"], s["x-|y+"]) + gamma * nll(s["x-|y-"])
    w = lambda: torch.sigmoid(
        -(alpha * s["x|y+"].policy / s["x|y+"].length + (1 - alpha) * s["x|y-"].policy / s["x|y-"].length)
    )
    combined = {
        "PBAA": lambda: policy,
        "SSO w/o W and g": lambda: policy,
        "SSO": lambda: policy + w() * g * (plus() + minus()),
        "SSO w/o W": lambda: policy + g * (plus() + minus()),
        "SSO w/o g": lambda: w() * policy,
        "+L+": lambda: policy + w() * g * plus(),
        "+L−": lambda: policy + w() * g * minus(),
        "SSO naive L−": lambda: policy + w() * g * (plus() + naive()),
        "SSO offline": lambda: policy + w() * g * (plus() + minus()),
        "PBAA offline": lambda: policy,
        "SSO (IPO-based)": lambda: policy + w() * g * (plus() + minus()),
        "PBAA (IPO-based)": lambda: policy,
        # the authors' code: SFT (coefficient gamma = pref_ftx) outside W, the steered ones times g
        "SSO (authors' code)": lambda: (
            policy
            + gamma * (nll(s["x|y+"]) + g * nll(s["x+|y+"]) + g * nll(s["x-|yo"]))
            + w() * g * (base(s["x+|y+"], s["x+|y-"]) + base(s["x-|yo"], s["x-|y+"]))
        ),
    }
    if variant == "SSO two-stage":
        return {"generator": (plus() + minus()).mean(), "policy": policy.mean()}
    return {"combined": combined[variant]().mean()}


VARIANT_CONFIGS = sorted(p.stem for p in (Path(CONFIG_DIR) / "variant").glob("*.yaml"))


@pytest.mark.parametrize("name", VARIANT_CONFIGS)
def test_every_named_variant_steps_with_the_loss_of_its_sso_md_formula(world, name):
    tokenizer, config, examples = world
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"variant={name}"])
    objective = instantiate(cfg.loss)
    base = {"DPO": dpo, "IPO": ipo}[type(objective.base).__name__]
    base_loss = lambda w, l: base(w, l, cfg.loss.base.beta)
    torch.manual_seed(0)
    module = SSOModule(
        LlamaForCausalLM(config), tokenizer, objective, lambda params: None, phases=instantiate(cfg.scheme).phases
    )
    module.log_dict = lambda *a, **k: None
    seqs = {}
    for key in SEQUENCE_KEYS:
        parts = [sequence_by_sequence(module.policy, ex, key) for ex in examples]
        seqs[key] = SeqLogps(*(torch.stack([getattr(p, f).detach() for p in parts]) for f in SeqLogps._fields))
    expected = paper_formula(cfg.variant, seqs, base_loss, cfg.loss.gamma, cfg.loss.g, cfg.loss.alpha)
    for phase, value in expected.items():
        module.phase = phase
        loss = module.training_step(Collator(module.keys, tokenizer.pad_token_id)(examples), 0)
        torch.testing.assert_close(loss.detach(), value, atol=1e-5, rtol=1e-5)
