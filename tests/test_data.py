"""The data path: principles, prompt files, snapshots, filtering, batching, generation and
sequence scoring. Expectations are hand-computed or come from naive re-implementations
written here (e.g. running the model on one sequence at a time)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM

from sso_lightning.data.batching import Collator, cut_lengths, pack, pack_pairs
from sso_lightning.data.filtering import drop_degenerate
from sso_lightning.data.principles import PrincipleLibrary, PrinciplePair
from sso_lightning.data.prompts import JsonlPrompts, read_jsonl
from sso_lightning.data.snapshot import (
    SteeredExample,
    from_record,
    read_snapshot,
    to_record,
    write_snapshot,
)
from sso_lightning.data.steering import SteeredPrompt, render_prompt, steer
from sso_lightning.errors import ConfigError
from sso_lightning.generation import Response, Sampling, cut_at_eos, generate, pad_batch
from sso_lightning.scoring import score_sequences
from sso_lightning.toy.task import DIGITS, FILLER_WORDS
from sso_lightning.toy.tokenizer import build_toy_tokenizer

ROOT = Path(__file__).resolve().parent.parent

TOY_PRINCIPLES = {
    "order": {"good": "list the digits from small to large", "bad": "list the digits in a random order"},
    "completeness": {"good": "keep every digit of the question", "bad": "leave out some of the digits"},
}
TOY_CONCISION = {"good": "give only the digits", "bad": "talk a lot before the digits"}


@pytest.fixture(scope="module")
def tok():
    texts = ["sort", *DIGITS, *FILLER_WORDS, *(p[s] for p in [*TOY_PRINCIPLES.values(), TOY_CONCISION] for s in p)]
    return build_toy_tokenizer(texts)


def one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------------------------------------
# principles.py
# ---------------------------------------------------------------------------------------------

FOUR = {name: {"good": f"{name} good", "bad": f"{name} bad"} for name in ("a", "b", "c", "d")}
CONC = {"good": "be short", "bad": "be long"}


def library(**kw) -> PrincipleLibrary:
    args = dict(features=FOUR, concision=CONC, features_per_prompt=(1, 3), concision_probability=0.2, separator=" | ")
    args.update(kw)
    return PrincipleLibrary(**args)


def qs(n: int) -> list[str]:
    return [f"query number {i}" for i in range(n)]


def test_for_query_deterministic_per_text_and_seed():
    a, b = library(seed=0), library(seed=0)
    assert [a.for_query(q) for q in qs(200)] == [b.for_query(q) for q in qs(200)]
    assert a.for_queries(qs(200)) == [a.for_query(q) for q in qs(200)]
    # the choice depends on the query text, not on call order
    assert a.for_query("query number 5") == a.for_queries(list(reversed(qs(200))))[200 - 1 - 5]
    assert [library(seed=1).for_query(q) for q in qs(200)] != [a.for_query(q) for q in qs(200)]
    assert len({a.for_query(q).features for q in qs(200)}) > 5  # it does vary across queries


def test_feature_count_range_concision_rate_and_texts():
    lib = library()
    counts, with_concision = Counter(), 0
    n = 2000
    for q in qs(n):
        pair = lib.for_query(q)
        base = [f for f in pair.features if f != "concision"]
        assert 1 <= len(base) <= 3 and len(set(base)) == len(base) and set(base) <= set(FOUR)
        counts[len(base)] += 1
        if "concision" in pair.features:
            with_concision += 1
            assert pair.features[-1] == "concision"
        table = {**FOUR, "concision": CONC}
        assert pair.good == " | ".join(table[f]["good"] for f in pair.features)
        assert pair.bad == " | ".join(table[f]["bad"] for f in pair.features)
    assert set(counts) == {1, 2, 3}
    assert abs(with_concision / n - 0.2) < 0.03


def test_concision_probability_zero_and_one():
    assert all("concision" not in library(concision_probability=0.0).for_query(q).features for q in qs(300))
    assert all(library(concision_probability=1.0).for_query(q).features[-1] == "concision" for q in qs(300))
    no_pair = library(concision=None, concision_probability=0.0)
    assert all("concision" not in no_pair.for_query(q).features for q in qs(100))


def test_exact_feature_count_when_low_equals_high():
    lib = library(features_per_prompt=(2, 2), concision_probability=0.0)
    assert all(len(lib.for_query(q).features) == 2 for q in qs(200))


@pytest.mark.parametrize(
    "kw, fragment",
    [
        (dict(features={**FOUR, "e": {"good": "x"}}), "principles.features.e"),
        (dict(features={**FOUR, "e": {"good": "x", "bad": "y", "ugly": "z"}}), "principles.features.e"),
        (dict(concision={"good": "x", "worse": "y"}), "principles.features.concision"),
        (dict(features_per_prompt=(0, 2)), "features_per_prompt"),
        (dict(features_per_prompt=(3, 2)), "features_per_prompt"),
        (dict(features_per_prompt=(1, 5)), "features_per_prompt"),
        (dict(concision=None, concision_probability=0.2), "concision_probability"),
        (dict(concision_probability=1.5), "concision_probability"),
        (dict(concision_probability=-0.1), "concision_probability"),
    ],
)
def test_library_config_errors(kw, fragment):
    with pytest.raises(ConfigError) as err:
        library(**kw)
    assert fragment in one_line(err)


@pytest.mark.parametrize("name, n_features, separator", [("toy", 2, " "), ("paper", 7, "\n")])
def test_shipped_principle_configs_build(name, n_features, separator):
    lib = hydra.utils.instantiate(OmegaConf.load(ROOT / "conf" / "principles" / f"{name}.yaml"))
    assert isinstance(lib, PrincipleLibrary)
    assert len(lib.features) == n_features and lib.concision is not None
    assert list(lib.features_per_prompt) == [1, 2] and lib.concision_probability == 0.2
    for q in qs(50):
        pair = lib.for_query(q)
        table = {**{k: dict(v) for k, v in lib.features.items()}, "concision": dict(lib.concision)}
        assert pair.good == separator.join(table[f]["good"] for f in pair.features)
        assert pair.bad == separator.join(table[f]["bad"] for f in pair.features)


# ---------------------------------------------------------------------------------------------
# prompts.py
# ---------------------------------------------------------------------------------------------


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_read_jsonl_records_and_blank_lines(tmp_path):
    path = write(tmp_path / "p.jsonl", ['{"prompt": "a"}', "", '{"prompt": "b", "n": 2}', "   "])
    assert read_jsonl(path) == [(1, {"prompt": "a"}), (3, {"prompt": "b", "n": 2})]
    assert JsonlPrompts(str(path), num_eval=0).load().train == ["a", "b"]


def test_read_jsonl_missing_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        read_jsonl(tmp_path / "nope.jsonl")
    assert "nope.jsonl" in one_line(err) and "not found" in str(err.value)


def test_read_jsonl_malformed_line_names_path_and_line(tmp_path):
    path = write(tmp_path / "p.jsonl", ['{"prompt": "a"}', "", '{"prompt": "b"', '{"prompt": "c"}'])
    with pytest.raises(ConfigError) as err:
        read_jsonl(path)
    assert f"{path}:3" in one_line(err) and "not valid JSON" in str(err.value)


@pytest.mark.parametrize("line, kind", [("[1, 2]", "list"), ('"text"', "str"), ("3", "int"), ("null", "NoneType")])
def test_read_jsonl_non_object_line(tmp_path, line, kind):
    path = write(tmp_path / "p.jsonl", ['{"prompt": "a"}', line])
    with pytest.raises(ConfigError) as err:
        read_jsonl(path)
    assert f"{path}:2" in one_line(err) and kind in str(err.value)


def test_read_jsonl_empty_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        read_jsonl(write(tmp_path / "p.jsonl", ["", ""]))
    assert "no records" in one_line(err)


def test_jsonl_prompts_missing_field_names_field_and_record_fields(tmp_path):
    path = write(tmp_path / "p.jsonl", ['{"prompt": "a"}', '{"question": "b", "id": 7}'])
    with pytest.raises(ConfigError) as err:
        JsonlPrompts(str(path), num_eval=0).load()
    message = one_line(err)
    assert "'prompt'" in message and "id, question" in message and f"{path}:2" in message


@pytest.mark.parametrize("value", ['""', '"   "', "3", "null", '["a"]'])
def test_jsonl_prompts_empty_or_non_string(tmp_path, value):
    path = write(tmp_path / "p.jsonl", ['{"prompt": "a"}', '{"prompt": ' + value + "}"])
    with pytest.raises(ConfigError) as err:
        JsonlPrompts(str(path), num_eval=0).load()
    assert "'prompt'" in one_line(err)


def test_jsonl_prompts_limit_and_eval_split(tmp_path):
    path = write(tmp_path / "p.jsonl", [json.dumps({"q": f"prompt {i}"}) for i in range(10)])
    full = JsonlPrompts(path=str(path), field="q", num_eval=3).load()
    assert full.train == [f"prompt {i}" for i in range(7)]
    assert full.eval == ["prompt 7", "prompt 8", "prompt 9"]
    limited = JsonlPrompts(path=str(path), field="q", num_eval=2, limit=6).load()
    assert limited.train == [f"prompt {i}" for i in range(4)] and limited.eval == ["prompt 4", "prompt 5"]


@pytest.mark.parametrize("num_eval, limit", [(10, None), (11, None), (4, 4), (5, 3)])
def test_jsonl_prompts_num_eval_too_large(tmp_path, num_eval, limit):
    path = write(tmp_path / "p.jsonl", [json.dumps({"prompt": f"p{i}"}) for i in range(10)])
    with pytest.raises(ConfigError) as err:
        JsonlPrompts(path=str(path), num_eval=num_eval, limit=limit).load()
    assert "num_eval" in one_line(err)


# ---------------------------------------------------------------------------------------------
# snapshot.py
# ---------------------------------------------------------------------------------------------


def make_example(tok, query="sort 3 1 2", features=("order", "concision"), seed=0) -> SteeredExample:
    pair = PrinciplePair(
        features,
        " ".join(TOY_PRINCIPLES.get(f, TOY_CONCISION)["good"] for f in features),
        " ".join(TOY_PRINCIPLES.get(f, TOY_CONCISION)["bad"] for f in features),
    )
    eos = tok.eos_token_id

    def resp(text, finished):
        ids = tuple(tok(text, add_special_tokens=False)["input_ids"]) + ((eos,) if finished else ())
        return Response(ids=ids, text=text, finished=finished)

    return SteeredExample(
        prompt=steer(tok, query, pair),
        responses={"y+": resp("1 2 3", True), "y-": resp("well ok 3 1", True), "yo": resp("so 1 3 2 2 2", False)},
        scores={"y+": 1.0, "y-": 0.1 + seed, "yo": 0.0},
        ref_logps={"x+|y+": -1.5, "x+|y-": -7.25 - seed, "x-|yo": -3.0},
    )


def test_record_round_trip_keeps_everything(tok):
    example = make_example(tok)
    # token ids that re-tokenising the text would NOT give back: they must be kept as stored
    odd = Response(
        ids=(tok.convert_tokens_to_ids("1"), tok.pad_token_id, tok.convert_tokens_to_ids("2")),
        text="1 2",
        finished=False,
    )
    example.responses["y-"] = odd
    record = json.loads(json.dumps(to_record(example)))
    assert record["instruction"] == "sort 3 1 2" and record["chosen"] == "1 2 3" and record["raw"] == "so 1 3 2 2 2"
    assert record["p_system"] == example.prompt.principles.good and record["n_system"] == example.prompt.principles.bad
    back = from_record(record, tok, "here")
    assert back.responses == example.responses
    assert back.responses["y-"].ids == odd.ids and back.responses["y-"].finished is False
    assert back.responses["yo"].finished is False and back.responses["y+"].finished is True
    assert back.scores == example.scores
    assert back.ref_logps == example.ref_logps
    assert back.prompt.query == example.prompt.query
    assert back.prompt.principles == example.prompt.principles
    assert back.prompt.ids == example.prompt.ids


def test_authors_format_record_is_tokenised_with_eos(tok):
    record = {
        "instruction": "sort 3 1 2",
        "system": "",
        "p_system": "give only the digits",
        "n_system": "talk a lot before the digits",
        "chosen": "1 2 3",
        "rejected": "well 3 1",
        "raw": "1 3 2",
    }
    ex = from_record(record, tok, "authors.jsonl:1")
    ids = lambda words: tuple(tok.convert_tokens_to_ids(words.split()))
    eos = tok.eos_token_id
    assert ex.responses["y+"] == Response(ids=ids("1 2 3") + (eos,), text="1 2 3", finished=True)
    assert ex.responses["y-"] == Response(ids=ids("well 3 1") + (eos,), text="well 3 1", finished=True)
    assert ex.responses["yo"] == Response(ids=ids("1 3 2") + (eos,), text="1 3 2", finished=True)
    assert ex.prompt.principles == PrinciplePair((), "give only the digits", "talk a lot before the digits")
    assert ex.scores == {} and ex.ref_logps == {}
    assert tok.convert_ids_to_tokens(ex.prompt.ids["x+"]) == (
        [
            "<|system|>",
            "give",
            "only",
            "the",
            "digits",
            "<|end|>",
            "<|user|>",
            "sort",
            "3",
            "1",
            "2",
            "<|end|>",
            "<|assistant|>",
        ]
    )
    assert tok.convert_ids_to_tokens(ex.prompt.ids["x"]) == [
        "<|user|>",
        "sort",
        "3",
        "1",
        "2",
        "<|end|>",
        "<|assistant|>",
    ]
    # a non-empty authors' system prompt is used for x
    with_system = from_record({**record, "system": "well"}, tok, "authors.jsonl:1")
    assert with_system.prompt.ids["x"][:3] == tok.convert_tokens_to_ids(["<|system|>", "well", "<|end|>"])


def test_record_missing_required_field(tok):
    with pytest.raises(ConfigError) as err:
        from_record({"instruction": "sort 1", "p_system": "a", "n_system": "b", "chosen": "1"}, tok, "f.jsonl:4")
    assert "f.jsonl:4" in one_line(err) and "rejected" in str(err.value)


def authors_lines(with_raw: bool) -> list[str]:
    base = {
        "instruction": "sort 2 1",
        "system": "",
        "p_system": "give only the digits",
        "n_system": "talk a lot",
        "chosen": "1 2",
        "rejected": "2 1",
    }
    return [json.dumps({**base, **({"raw": "1 2 2"} if with_raw else {})}) for _ in range(2)]


def test_read_snapshot_requires_raw_for_yo_keys(tmp_path, tok):
    path = write(tmp_path / "s.jsonl", authors_lines(with_raw=True)[:1] + authors_lines(with_raw=False)[:1])
    with pytest.raises(ConfigError) as err:
        read_snapshot(path, tok, ["x+|y+", "x+|y-", "x-|yo", "x-|y+"])
    message = one_line(err)
    assert f"{path}:2" in message and "raw" in message
    # without a yo key the same file is fine
    examples = read_snapshot(path, tok, ["x+|y+", "x+|y-"])
    assert len(examples) == 2 and "yo" in examples[0].responses and "yo" not in examples[1].responses


def test_read_snapshot_error_names_the_real_line(tmp_path, tok):
    path = write(tmp_path / "s.jsonl", ["", authors_lines(with_raw=False)[0]])
    with pytest.raises(ConfigError) as err:
        read_snapshot(path, tok, ["x-|yo"])
    assert f"{path}:2:" in str(err.value)


@pytest.mark.parametrize(
    "ids, fragment",
    [([], "must be a non-empty list of token ids"), ([5, -1], "-1 is not a token id"), ([5, 10**6], "1000000 is not")],
    ids=["empty", "negative", "beyond-vocabulary"],
)
def test_read_snapshot_refuses_token_ids_the_model_cannot_take(tmp_path, tok, ids, fragment):
    """An empty answer makes every step's loss NaN; an id outside the vocabulary fails in the
    embedding (a device-side assert on a GPU): both stop at reading, naming the line and field."""
    good = json.loads(authors_lines(with_raw=True)[0])
    bad = {**good, "token_ids": {"chosen": ids}}
    path = write(tmp_path / "s.jsonl", [json.dumps(good), json.dumps(bad)])
    with pytest.raises(ConfigError) as err:
        read_snapshot(path, tok, ["x+|y+", "x+|y-"])
    message = one_line(err)
    assert f"{path}:2: token_ids.chosen" in message and fragment in message
    if ids:
        assert f"(0 to {len(tok) - 1})" in message


def test_write_snapshot_atomic_and_never_overwrites(tmp_path, tok):
    path = tmp_path / "run" / "snapshot.jsonl"
    examples = [make_example(tok, "sort 3 1 2"), make_example(tok, "sort 9 8", features=("completeness",), seed=1)]
    write_snapshot(path, examples)
    assert sorted(p.name for p in path.parent.iterdir()) == ["snapshot.jsonl"]  # no .tmp left
    content = path.read_bytes()
    assert len(content.decode().splitlines()) == 2
    back = read_snapshot(path, tok, ["x+|y+", "x-|yo"])
    for a, b in zip(back, examples):
        assert a.responses == b.responses and a.scores == b.scores and a.ref_logps == b.ref_logps
        assert a.prompt.ids == b.prompt.ids and a.prompt.principles == b.prompt.principles

    with pytest.raises(ConfigError) as err:
        write_snapshot(path, examples[:1])
    assert "already exists" in one_line(err)
    assert path.read_bytes() == content
    assert sorted(p.name for p in path.parent.iterdir()) == ["snapshot.jsonl"]


# ---------------------------------------------------------------------------------------------
# filtering.py
# ---------------------------------------------------------------------------------------------

EOS_ID = 2


def ex_with(plus, minus, raw=None, tag=0) -> SteeredExample:
    prompt = SteeredPrompt(
        query=f"q{tag}", principles=PrinciplePair((), "g", "b"), ids={"x": [5], "x+": [6], "x-": [7]}
    )
    responses = {"y+": Response(tuple(plus), "", True), "y-": Response(tuple(minus), "", True)}
    if raw is not None:
        responses["yo"] = Response(tuple(raw), "", True)
    return SteeredExample(prompt=prompt, responses=responses)


def test_drop_degenerate_counts_reasons_and_keeps_order():
    keep1 = ex_with([10, 11, EOS_ID], [12, EOS_ID], [13, EOS_ID], tag=1)
    empty_plus = ex_with([EOS_ID], [12, EOS_ID], [13], tag=2)
    empty_raw = ex_with([10], [12], [], tag=3)
    same = ex_with([10, 11, EOS_ID], [10, 11], [13], tag=4)  # equal once EOS is ignored
    same_and_empty = ex_with([], [], [13], tag=5)  # empty takes precedence
    plus_is_raw = ex_with([10, EOS_ID], [12, EOS_ID], [10], tag=6)
    minus_is_raw = ex_with([10, EOS_ID], [12, EOS_ID], [12, EOS_ID], tag=7)
    keep2 = ex_with([10, 12], [12, 10], tag=8)  # no yo at all
    keep3 = ex_with([10], [11], [10, 10], tag=9)
    examples = [keep1, empty_plus, empty_raw, same, same_and_empty, plus_is_raw, minus_is_raw, keep2, keep3]
    kept, dropped = drop_degenerate(examples, EOS_ID)
    assert [e.prompt.query for e in kept] == ["q1", "q8", "q9"]
    assert dropped == Counter({"empty": 3, "chosen_equals_rejected": 1, "equals_raw": 2})
    assert drop_degenerate([keep1, keep2], EOS_ID) == ([keep1, keep2], Counter())


# ---------------------------------------------------------------------------------------------
# batching.py
# ---------------------------------------------------------------------------------------------


def batch_examples():
    a = SteeredExample(
        prompt=SteeredPrompt("qa", PrinciplePair((), "g", "b"), {"x": [1], "x+": [21, 22, 23], "x-": [31, 32]}),
        responses={
            "y+": Response((41, 42, 2), "", True),
            "y-": Response((51,), "", False),
            "yo": Response((61, 2), "", True),
        },
        ref_logps={"x+|y+": -1.0, "x-|yo": -2.0, "x|y-": -3.0},
    )
    b = SteeredExample(
        prompt=SteeredPrompt("qb", PrinciplePair((), "g", "b"), {"x": [7, 8], "x+": [24], "x-": [33, 34, 35, 36]}),
        responses={
            "y+": Response((43, 2), "", True),
            "y-": Response((52, 53, 54, 55), "", False),
            "yo": Response((62, 63, 64, 2), "", True),
        },
        ref_logps={"x+|y+": -4.0, "x-|yo": -5.0, "x|y-": -6.0},
    )
    return a, b


def test_pack_rows_key_major_right_padded_with_masks():
    a, b = batch_examples()
    keys = ["x+|y+", "x-|yo", "x|y-"]
    out = pack([a, b], keys, pad_id=0)
    # row k*B + b: prompt ids then response ids, right-padded to the longest row (4 + 4 = 8)
    expected_rows = [
        ([21, 22, 23], [41, 42, 2]),  # k=0 (x+|y+), b=0
        ([24], [43, 2]),  # k=0, b=1
        ([31, 32], [61, 2]),  # k=1 (x-|yo), b=0
        ([33, 34, 35, 36], [62, 63, 64, 2]),  # k=1, b=1
        ([1], [51]),  # k=2 (x|y-), b=0
        ([7, 8], [52, 53, 54, 55]),  # k=2, b=1
    ]
    width = 8
    ids = [p + r + [0] * (width - len(p) - len(r)) for p, r in expected_rows]
    attn = [[1] * (len(p) + len(r)) + [0] * (width - len(p) - len(r)) for p, r in expected_rows]
    resp = [[False] * len(p) + [True] * len(r) + [False] * (width - len(p) - len(r)) for p, r in expected_rows]
    assert out["input_ids"].tolist() == ids
    assert out["attention_mask"].tolist() == attn
    assert out["response_mask"].tolist() == resp
    assert out["input_ids"].dtype == torch.long and out["response_mask"].dtype == torch.bool
    assert out["response_mask"].sum(-1).tolist() == [3, 2, 2, 4, 1, 4]  # EOS included


def test_collator_adds_ref_k_by_b_and_rejects_missing_key():
    a, b = batch_examples()
    batch = Collator(["x-|yo", "x+|y+"], pad_id=0)([a, b])
    assert batch["ref"].tolist() == [[-2.0, -5.0], [-1.0, -4.0]]
    assert batch["ref"].dtype == torch.float32
    assert batch["input_ids"].tolist() == pack([a, b], ["x-|yo", "x+|y+"], 0)["input_ids"].tolist()
    with pytest.raises(KeyError):
        Collator(["x+|y-"], pad_id=0)([a, b])


# ---------------------------------------------------------------------------------------------
# generation.py and scoring.py (a tiny random Llama; no training)
# ---------------------------------------------------------------------------------------------


def test_pad_batch_left_and_right():
    ids, mask = pad_batch([[5, 6, 7], [8], [9, 10]], pad_id=0, device="cpu", side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert ids.dtype == torch.long and mask.dtype == torch.long
    ids, mask = pad_batch([[5, 6, 7], [8], [9, 10]], pad_id=0, device="cpu", side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]


def test_cut_at_eos(tok):
    eos, pad = tok.eos_token_id, tok.pad_token_id
    one, two, well = tok.convert_tokens_to_ids(["1", "2", "well"])
    r = cut_at_eos([well, one, two, eos, pad, one, eos], eos, tok)
    assert r == Response(ids=(well, one, two, eos), text="well 1 2", finished=True)
    r = cut_at_eos([one, two, one], eos, tok)
    assert r == Response(ids=(one, two, one), text="1 2 1", finished=False)
    r = cut_at_eos([eos, one], eos, tok)
    assert r == Response(ids=(eos,), text="", finished=True)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        initializer_range=0.5,  # large init: outputs vary by prompt
    )
    model = LlamaForCausalLM(config).float().eval()
    with torch.no_grad():  # a pad embedding like any other token's, so attending to padding would show
        model.model.embed_tokens.weight[tok.pad_token_id] = torch.randn(32) * 0.5
    return model


GEN_QUERIES = ["sort 1 2 3 4 5 6", "sort 3", "sort 9 8 7", "sort 1 1 1 1 1 1 1 1 1", "sort 5 0", "sort 2 7 7 1"]


def test_generate_keeps_input_order_and_batching_does_not_change_greedy(tok, model):
    prompts = [render_prompt(tok, q, s) for q, s in zip(GEN_QUERIES, ["", "give only the digits", "", "well", "", ""])]
    assert len({len(p) for p in prompts}) > 3  # different lengths, so sorting by length reorders them
    greedy = dict(temperature=0.0, max_new_tokens=10)
    alone = [generate(model, tok, [p], Sampling(batch_size=1, **greedy))[0] for p in prompts]
    assert len({r.ids for r in alone}) > 3  # the prompts do lead to different answers
    sizes = []
    batched = generate(model, tok, prompts, Sampling(batch_size=4, **greedy), on_batch=sizes.append)
    assert batched == alone
    assert sizes == [4, 2]
    assert generate(model, tok, prompts, Sampling(batch_size=len(prompts), **greedy)) == alone
    for r in alone:
        if r.finished:
            assert r.ids[-1] == tok.eos_token_id and tok.eos_token_id not in r.ids[:-1]
        else:
            assert len(r.ids) == 10 and tok.eos_token_id not in r.ids
        assert r.text == tok.decode(list(r.ids), skip_special_tokens=True).strip()


def test_generate_matches_naive_greedy_loop(tok, model):
    prompt = render_prompt(tok, "sort 2 7 7 1")
    ids = list(prompt)
    model.eval()
    with torch.no_grad():
        for _ in range(8):
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(nxt)
            if nxt == tok.eos_token_id:
                break
    expected = ids[len(prompt) :]
    got = generate(model, tok, [prompt], Sampling(temperature=0.0, max_new_tokens=8, batch_size=1))[0]
    assert list(got.ids) == expected


@pytest.mark.parametrize("training", [True, False])
def test_generate_and_score_restore_mode(tok, model, training):
    model.train(training)
    generate(model, tok, [render_prompt(tok, "sort 1 2")], Sampling(temperature=0.0, max_new_tokens=3, batch_size=1))
    assert model.training is training
    score_sequences(model, [scoring_examples(tok)[0]], ["x+|y+"], tok.pad_token_id, batch_size=1)
    assert model.training is training
    model.eval()


def scoring_examples(tok) -> list[SteeredExample]:
    return [
        make_example(tok, "sort 3 1 2"),
        make_example(tok, "sort 9 8 7 6 5 4", features=("completeness",)),
        make_example(tok, "sort 0", features=("order", "completeness", "concision")),
        make_example(tok, "sort 4 4 4 4", features=("concision",)),
        make_example(tok, "sort 1 5", features=("order",)),
    ]


def naive_logp(model, prompt: list[int], response: tuple[int, ...]) -> float:
    seq = list(prompt) + list(response)
    with torch.no_grad():
        logits = model(torch.tensor([seq])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    return sum(float(logp[t - 1, seq[t]]) for t in range(len(prompt), len(seq)))


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("batch_size", [1, 2, 5, 8])
def test_score_sequences_equals_naive_per_sequence(tok, model, batch_size, packing):
    examples = scoring_examples(tok)
    keys = ["x+|y+", "x-|yo", "x|y-", "x+|y-"]
    model.eval()
    out = score_sequences(model, examples, keys, tok.pad_token_id, batch_size=batch_size, packing=packing)
    assert set(out) == set(keys)
    for key in keys:
        p, r = key.split("|")
        sums, lengths = out[key]
        naive = [naive_logp(model, ex.prompt.ids[p], ex.responses[r].ids) for ex in examples]
        expected = torch.tensor(naive, dtype=torch.float64)
        torch.testing.assert_close(sums.double(), expected, atol=1e-4, rtol=0)
        assert lengths.tolist() == [float(len(ex.responses[r].ids)) for ex in examples]
        assert (sums < 0).all()


def llama_factory_infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """LLaMA-Factory's data/processors/processor_utils.py ``infer_seqlen`` (the authors' trainer), transcribed."""
    if target_len * 2 < cutoff_len:  # truncate source
        max_target_len = cutoff_len
    elif source_len * 2 < cutoff_len:  # truncate target
        max_target_len = cutoff_len - source_len
    else:  # truncate both
        max_target_len = int(cutoff_len * (target_len / (source_len + target_len)))
    new_target_len = min(max_target_len, target_len)
    max_source_len = max(cutoff_len - new_target_len, 0)
    new_source_len = min(max_source_len, source_len)
    return new_source_len, new_target_len


def test_max_length_cuts_rows_as_llama_factory_does():
    for prompt in range(1, 40):
        for response in range(1, 40):
            for cutoff in (2, 7, 16, 33, 64):
                assert cut_lengths(prompt, response, cutoff) == llama_factory_infer_seqlen(prompt, response, cutoff)
    prompt, response = list(range(1, 31)), list(range(100, 140))
    pairs = [(prompt, response[:5]), (prompt[:5], response), (prompt, response[:10])]
    out = pack_pairs(pairs, pad_id=0, max_length=16)
    assert out["input_ids"].shape == (3, 16) and out["attention_mask"].sum(-1).tolist() == [16, 16, 16]
    assert out["input_ids"][0].tolist() == prompt[:11] + response[:5]  # a short response is kept whole
    assert out["input_ids"][1].tolist() == prompt[:5] + response[:11]  # a short prompt is kept whole
    assert out["input_ids"][2].tolist() == prompt[:12] + response[:4]  # both cut in proportion
    assert out["response_mask"].sum(-1).tolist() == [5, 11, 4] and not out["response_mask"][:, 0].any()
