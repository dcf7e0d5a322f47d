"""Prompt sources beyond JSON lines: .json/.parquet files, Hugging Face datasets, chat-style fields,
seeded selection, one-line errors, and every conf/data/*.yaml composing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from sso_lightning.__main__ import CONFIG_DIR
from sso_lightning.data.prompts import HFPrompts, JsonlPrompts, PromptFile, PromptSet, fit_prompts
from sso_lightning.errors import ConfigError
from sso_lightning.toy.tokenizer import build_toy_tokenizer

QUERIES = [f"prompt {i}" for i in range(10)]


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


def write_file(path: Path, records: list[dict]) -> Path:
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    else:
        raise AssertionError(suffix)
    return path


# ---------------------------------------------------------------------------------------------
# local files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_file_round_trip(tmp_path, suffix):
    path = write_file(tmp_path / f"p{suffix}", [{"q": q, "id": i} for i, q in enumerate(QUERIES)])
    prompts = PromptFile(path=str(path), field="q", num_eval=3).load()
    assert prompts == PromptSet(train=QUERIES[:7], eval=QUERIES[7:])
    limited = PromptFile(path=str(path), field="q", num_eval=2, limit=6).load()
    assert limited.train == QUERIES[:4] and limited.eval == QUERIES[4:6]


def test_jsonl_prompts_still_reads_json_lines_under_any_extension(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in QUERIES), encoding="utf-8")
    assert JsonlPrompts(path=str(path), num_eval=2).load() == PromptSet(QUERIES[:8], QUERIES[8:])
    with pytest.raises(ConfigError) as err:
        PromptFile(path=str(path), num_eval=2).load()
    assert all(s in one_line(err) for s in ("prompts.txt", "'.txt'", ".jsonl, .json, .parquet"))


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_seeded_shuffle_is_deterministic(tmp_path, suffix):
    path = write_file(tmp_path / f"p{suffix}", [{"prompt": q} for q in QUERIES])
    a = PromptFile(path=str(path), num_eval=2, limit=6, shuffle=True, seed=7).load()
    b = PromptFile(path=str(path), num_eval=2, limit=6, shuffle=True, seed=7).load()
    c = PromptFile(path=str(path), num_eval=2, limit=6, shuffle=True, seed=8).load()
    assert a == b and a != c
    assert len(a.train) == 4 and len(a.eval) == 2 and len(set(a.train + a.eval)) == 6
    assert set(a.train + a.eval) <= set(QUERIES) and a.train + a.eval != QUERIES[:6]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_chat_style_field_takes_first_user_message(tmp_path, suffix):
    records = [
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": q},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "again"},
            ]
        }
        for q in QUERIES
    ]
    path = write_file(tmp_path / f"p{suffix}", records)
    assert PromptFile(path=str(path), field="messages", num_eval=1).load() == PromptSet(QUERIES[:9], QUERIES[9:])


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("", "empty"),
        ("   ", "empty"),
        (3, "int"),
        (None, "NoneType"),
        ({"text": "x"}, "dict"),
        ([{"role": "assistant", "content": "x"}], "without a 'user' message"),
        ([{"role": "user", "content": ""}], "'content'"),
    ],
)
@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_bad_values_stop_with_one_line(tmp_path, suffix, value, fragment):
    path = write_file(tmp_path / f"p{suffix}", [{"prompt": "a"}, {"prompt": value}])
    with pytest.raises(ConfigError) as err:
        PromptFile(path=str(path), num_eval=0).load()
    message = one_line(err)
    where = f"{path}:2" if suffix == ".jsonl" else f"{path}: record 2"
    assert where in message and "'prompt'" in message and fragment in message, message


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_missing_field_lists_the_record_fields(tmp_path, suffix):
    path = write_file(tmp_path / f"p{suffix}", [{"question": "a", "id": 1}, {"question": "b", "id": 2}])
    with pytest.raises(ConfigError) as err:
        PromptFile(path=str(path), num_eval=0).load()
    message = one_line(err)
    assert str(path) in message and "'prompt'" in message and "id, question" in message
    assert "data.prompts.field" in message


@pytest.mark.parametrize(
    "name, content, fragments",
    [
        ("none.json", None, ["none.json", "file not found"]),
        ("none.parquet", None, ["none.parquet", "file not found"]),
        ("p.csv", "prompt\na\n", ["p.csv", "'.csv'", "valid: .jsonl, .json, .parquet"]),
        ("p", "x", ["unknown prompt file extension '(none)'", "valid: .jsonl, .json, .parquet"]),
        ("bad.json", '[{"prompt": "a"},\n {"prompt": }]', ["bad.json:2", "not valid JSON"]),
        ("obj.json", '{"data": [{"prompt": "a"}]}', ["obj.json", "expected a JSON array of objects, got dict"]),
        ("mixed.json", '[{"prompt": "a"}, "b"]', ["mixed.json: record 2", "expected a JSON object, got str"]),
        ("empty.json", "[]", ["empty.json", "no records"]),
        ("bad.parquet", "not parquet", ["bad.parquet", "not a valid Parquet file"]),
        ("bad.jsonl", '{"prompt": "a"}\n{"prompt": \n', ["bad.jsonl:2", "not valid JSON"]),
    ],
)
def test_bad_files_stop_with_one_line(tmp_path, name, content, fragments):
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        PromptFile(path=str(path), num_eval=0).load()
    message = one_line(err)
    assert all(f in message for f in fragments), message


@pytest.mark.parametrize(
    "kwargs, fragments",
    [
        (dict(num_eval=10), ["10 prompts", "num_eval=10"]),
        (dict(num_eval=3, limit=3), ["3 prompts", "num_eval=3"]),
        (dict(num_eval=-1), ["data.prompts.num_eval=-1"]),
        (dict(limit=0), ["data.prompts.limit=0"]),
    ],
)
def test_bad_sizes_stop_with_one_line(tmp_path, kwargs, fragments):
    path = write_file(tmp_path / "p.parquet", [{"prompt": q} for q in QUERIES])
    with pytest.raises(ConfigError) as err:
        PromptFile(path=str(path), **kwargs).load()
    assert all(f in one_line(err) for f in fragments)


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch):
    """No hub access: fail fast instead of retrying a network that is not there."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)


def chat(q: str) -> list[dict]:
    return [{"role": "system", "content": "sys"}, {"role": "user", "content": q}, {"role": "assistant", "content": "a"}]


@pytest.fixture
def saved_dict(tmp_path, offline) -> Path:
    """A tiny UltraFeedback-like DatasetDict saved to disk."""
    import datasets

    def part(prefix: str, n: int) -> datasets.Dataset:
        qs = [f"{prefix} {i}" for i in range(n)]
        return datasets.Dataset.from_dict({"prompt": qs, "messages": [chat(q) for q in qs], "score": list(range(n))})

    path = tmp_path / "uf"
    datasets.DatasetDict({"train_prefs": part("train", 20), "test_prefs": part("test", 5)}).save_to_disk(str(path))
    return path


def test_hf_saved_dataset_dict_with_eval_split(saved_dict):
    prompts = HFPrompts(name=str(saved_dict), split="train_prefs", eval_split="test_prefs", num_eval=3, limit=8).load()
    assert prompts == PromptSet(train=[f"train {i}" for i in range(8)], eval=[f"test {i}" for i in range(3)])
    # fewer eval records than num_eval: the whole split
    assert HFPrompts(name=str(saved_dict), split="train_prefs", eval_split="test_prefs", num_eval=64).load().eval == [
        f"test {i}" for i in range(5)
    ]


def test_hf_saved_dataset_dict_held_out_tail_chat_field_and_seed(saved_dict):
    plain = HFPrompts(name=str(saved_dict), split="train_prefs", num_eval=4, limit=10).load()
    assert plain == PromptSet(train=[f"train {i}" for i in range(6)], eval=[f"train {i}" for i in range(6, 10)])
    chat_field = HFPrompts(name=str(saved_dict), split="train_prefs", field="messages", num_eval=4, limit=10).load()
    assert chat_field == plain
    a = HFPrompts(name=str(saved_dict), split="train_prefs", num_eval=2, limit=8, shuffle=True, seed=1).load()
    b = HFPrompts(
        name=str(saved_dict), split="train_prefs", field="messages", num_eval=2, limit=8, shuffle=True, seed=1
    ).load()
    assert a == b and len(a.train) == 6 and len(a.eval) == 2 and len(set(a.train + a.eval)) == 8
    assert a != HFPrompts(name=str(saved_dict), split="train_prefs", num_eval=2, limit=8, shuffle=True, seed=2).load()
    # the same seeded choice as the file source makes
    assert a.train + a.eval != [f"train {i}" for i in range(8)]


def test_hf_saved_single_dataset(tmp_path, offline):
    import datasets

    path = tmp_path / "single"
    datasets.Dataset.from_dict({"text": QUERIES}).save_to_disk(str(path))
    assert HFPrompts(name=str(path), field="text", num_eval=3).load() == PromptSet(QUERIES[:7], QUERIES[7:])
    with pytest.raises(ConfigError) as err:
        HFPrompts(name=str(path), field="text", eval_split="test").load()
    assert "data.prompts.eval_split=test" in one_line(err)


@pytest.mark.parametrize(
    "kwargs, fragments",
    [
        (dict(split="nope"), ["data.prompts.split=nope", "valid: train_prefs, test_prefs"]),
        (dict(split="train_prefs", eval_split="nope"), ["data.prompts.eval_split=nope", "train_prefs, test_prefs"]),
        (
            dict(split="train_prefs", field="question"),
            ["no column 'question'", "prompt, messages, score", "data.prompts.field"],
        ),
        (dict(split="train_prefs", field="score"), ["row 0", "'score'", "int"]),
        (dict(split="train_prefs", num_eval=20), ["20 prompts", "num_eval=20"]),
    ],
)
def test_hf_bad_options_stop_with_one_line(saved_dict, kwargs, fragments):
    with pytest.raises(ConfigError) as err:
        HFPrompts(name=str(saved_dict), **kwargs).load()
    message = one_line(err)
    assert all(f in message for f in fragments), message


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_hf_local_data_file_goes_through_load_dataset(tmp_path, offline, suffix):
    path = write_file(tmp_path / f"p{suffix}", [{"prompt": q} for q in QUERIES])
    prompts = HFPrompts(name=str(path), num_eval=2, cache_dir=str(tmp_path / "cache")).load()
    assert prompts == PromptSet(QUERIES[:8], QUERIES[8:])


def test_hf_hub_name_without_network_is_one_line(tmp_path, offline):
    name = "HuggingFaceH4/ultrafeedback_binarized"
    with pytest.raises(ConfigError) as err:
        HFPrompts(name=name, split="train_prefs", cache_dir=str(tmp_path / "cache")).load()
    message = one_line(err)
    assert message.startswith(f"data.prompts.name={name}: could not be loaded ("), message


# ---------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------

DATA_CONFIGS = sorted(p.stem for p in Path(CONFIG_DIR, "data").glob("*.yaml"))
REQUIRED = {
    "jsonl": ["data.prompts.path=p.jsonl"],
    "file": ["data.prompts.path=p.parquet"],
    "hf": [
        "data.prompts.name=HuggingFaceH4/ultrafeedback_binarized",
        "data.prompts.split=train_prefs",
        "data.prompts.limit=8000",
    ],
}


@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_every_data_config_composes(name):
    assert {"toy", "jsonl", "file", "hf"} <= set(DATA_CONFIGS)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(config_name="config", overrides=[f"data={name}", *REQUIRED.get(name, [])])
    assert {"prompts", "batch_size", "reference", "offline"} <= set(cfg.data)
    assert cfg.data.batch_size == 16 and cfg.data.reference == "iteration" and cfg.data.offline is None
    assert "_target_" in cfg.data.prompts
    assert not [k for k in cfg.data.prompts if cfg.data.prompts._get_node(k)._is_missing()]
    assert cfg.data.max_prompt_length == (1024 if name == "toy" else 2048) and cfg.data.long_prompts == "refuse"


def test_file_and_hf_configs_build_sources(tmp_path, saved_dict):
    from sso_lightning.train import build

    path = write_file(tmp_path / "p.json", [{"prompt": q} for q in QUERIES])
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        file_cfg = compose(
            config_name="config", overrides=["data=file", f"data.prompts.path={path}", "data.prompts.num_eval=2"]
        )
        hf_cfg = compose(
            config_name="config",
            overrides=[
                "data=hf",
                f"data.prompts.name={saved_dict}",
                "data.prompts.split=train_prefs",
                "data.prompts.limit=8",
                "data.prompts.eval_split=test_prefs",
                "data.prompts.num_eval=2",
            ],
        )
    assert build(file_cfg.data.prompts).load() == PromptSet(QUERIES[:8], QUERIES[8:])
    hf = build(hf_cfg.data.prompts).load()
    # hf.yaml picks a seeded subset (shuffle: true)
    assert len(hf.train) == 8 and set(hf.train) <= {f"train {i}" for i in range(20)}
    assert len(hf.eval) == 2 and set(hf.eval) <= {f"test {i}" for i in range(5)}
    assert build(hf_cfg.data.prompts).load() == hf


# ---------------------------------------------------------------------------------------------
# length: data.max_prompt_length, data.long_prompts
# ---------------------------------------------------------------------------------------------

LIMIT = 30  # tokens; the toy template adds 3 to a query: <|user|> ... <|end|> <|assistant|>


def x_length(tokenizer, query: str) -> int:
    """Tokens of the plain prompt x, rendered here without the package's helpers."""
    messages = [{"role": "user", "content": query}]
    return len(
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
    )


@pytest.fixture
def long_file(tmp_path):
    """Ten prompts, the last two held out; line 4 (training) and line 10 (held out) are too long."""
    queries = [f"sort {i} 3 1" for i in range(10)]
    queries[3] = "sort " + " ".join(str(i % 10) for i in range(60))
    queries[9] = "sort " + " ".join(str(i % 7) for i in range(40))
    path = write_file(tmp_path / "long.jsonl", [{"prompt": q} for q in queries])
    tokenizer = build_toy_tokenizer(["sort", *map(str, range(10))])
    return JsonlPrompts(path=str(path), num_eval=2).load(), queries, tokenizer, path


def test_a_long_prompt_is_refused_with_its_line_and_the_count(long_file):
    prompts, queries, tokenizer, path = long_file
    with pytest.raises(ConfigError) as err:
        fit_prompts(prompts, tokenizer, LIMIT, "refuse")
    assert one_line(err) == (
        f"{path}:4: a prompt of {x_length(tokenizer, queries[3])} tokens, longer than data.max_prompt_length={LIMIT} "
        "(2 of 10 prompts are); set data.long_prompts=cut or skip, or raise data.max_prompt_length"
    )
    assert fit_prompts(prompts, tokenizer, None, "refuse") == prompts  # null: no limit
    assert fit_prompts(prompts, tokenizer, 70, "refuse") == prompts


def test_long_prompts_are_cut_to_fit(long_file, capsys):
    prompts, queries, tokenizer, path = long_file
    fitted = fit_prompts(prompts, tokenizer, LIMIT, "cut")
    assert fitted.train[:3] == queries[:3] and fitted.train[4:] == queries[4:8] and fitted.eval[0] == queries[8]
    for cut, query in ((fitted.train[3], queries[3]), (fitted.eval[1], queries[9])):
        words = query.split()
        n = len(cut.split())
        assert words[:n] == cut.split() and x_length(tokenizer, cut) <= LIMIT
        assert x_length(tokenizer, " ".join(words[: n + 1])) > LIMIT  # the longest start that fits
    assert fitted.metrics == {"data/prompts_cut": 2.0}
    assert fitted.where("train", 3) == f"{path}:4"
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == 1 and notes[0].startswith("note: 2 of 10 prompts (1 training, 1 held-out) are longer than ")
    assert f"were cut (data.long_prompts=cut; first: {path}:4: a prompt of" in notes[0]


def test_long_prompts_are_skipped(long_file, capsys):
    prompts, queries, tokenizer, path = long_file
    fitted = fit_prompts(prompts, tokenizer, LIMIT, "skip")
    assert fitted.train == queries[:3] + queries[4:8] and fitted.eval == [queries[8]]
    assert fitted.metrics == {"data/prompts_skipped": 2.0}
    assert fitted.where("train", 3) == f"{path}:5" and fitted.where("eval", 0) == f"{path}:9"
    assert "were skipped (data.long_prompts=skip" in capsys.readouterr().err
    # nothing too long: the count is 0, nothing is said
    assert fit_prompts(prompts, tokenizer, 70, "skip").metrics == {"data/prompts_skipped": 0.0}
    assert capsys.readouterr().err == ""


def test_skipping_every_training_prompt_or_a_limit_below_the_template_is_one_line(long_file):
    prompts, _, tokenizer, _ = long_file
    with pytest.raises(ConfigError) as err:
        fit_prompts(prompts, tokenizer, 6, "skip")
    assert one_line(err).startswith("all 8 training prompts are longer than data.max_prompt_length=6 (first: ")
    with pytest.raises(ConfigError) as err:
        fit_prompts(prompts, tokenizer, 3, "cut")
    assert one_line(err) == (
        "data.max_prompt_length=3 leaves no room for a query: the chat template alone takes 3 tokens of it; "
        "raise data.max_prompt_length"
    )


def test_a_cut_prompt_fits_under_a_subword_tokenizer():
    """A byte-level BPE splits words into pieces: the cut is made in tokens and checked as rendered."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    corpus = ["the quick brown fox jumps over the lazy dog", "sorting numbers is fun", "<|user|> <|end|>"] * 20
    core.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core)
    tokenizer.chat_template = build_toy_tokenizer(["x"]).chat_template
    query = "unfamiliar-words: " + "zebra quokka! " * 50
    prompts = PromptSet(["the fox", query], [], source="data.prompts")
    fitted = fit_prompts(prompts, tokenizer, 60, "cut")
    assert fitted.train[0] == "the fox" and query.startswith(fitted.train[1]) and len(fitted.train[1]) > 10
    assert x_length(tokenizer, fitted.train[1]) <= 60 < x_length(tokenizer, query)
    with pytest.raises(ConfigError, match=r"^data.prompts: training prompt 2: a prompt of \d+ tokens, longer than "):
        fit_prompts(prompts, tokenizer, 60, "refuse")


def test_hf_prompts_name_their_row(saved_dict):
    prompts = HFPrompts(name=str(saved_dict), split="train_prefs", eval_split="test_prefs", num_eval=3, limit=8).load()
    assert prompts.where("train", 2) == f"data.prompts.name={saved_dict} split train_prefs row 2"
    assert prompts.where("eval", 1) == f"data.prompts.name={saved_dict} split test_prefs row 1"
