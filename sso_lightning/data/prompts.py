"""Prompt sources: where the queries x come from, validated before anything runs.

A prompt source is any object with ``.load() -> PromptSet(train, eval)``:

* :class:`PromptFile` -- a local ``.jsonl``, ``.json`` (an array of objects) or ``.parquet`` file,
  chosen by extension (``conf/data/file.yaml``); :class:`JsonlPrompts` always reads JSON lines
  (``conf/data/jsonl.yaml``).
* :class:`HFPrompts` -- a Hugging Face dataset by hub name, local dataset directory, or a directory
  written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (``conf/data/hf.yaml``).

Field mapping (``field``, all sources): the value is either a non-empty string, or a chat-style
list of messages such as ``[{"role": "system", "content": ...}, {"role": "user", "content": "..."}]``,
in which case the query is the ``content`` of the first message whose ``role`` is ``"user"``.

Selection (all sources): the records are optionally shuffled with ``seed`` (``shuffle=true``), cut to
the first ``limit``, and the last ``num_eval`` of those are held out for ``eval/quality``. HFPrompts
can instead hold out ``num_eval`` records of another split (``eval_split``); ``limit`` then counts
training queries only.

Length (all sources, ``fit_prompts``): once the tokenizer is loaded, every query, training and
held-out, is rendered as the plain prompt x; one longer than ``data.max_prompt_length`` tokens is
refused, cut or skipped as ``data.long_prompts`` says.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sso_lightning.errors import ConfigError

FILE_FORMATS = (".jsonl", ".json", ".parquet")
LONG_PROMPTS = ("refuse", "cut", "skip")  # data.long_prompts: what a prompt over data.max_prompt_length does


@dataclass(frozen=True)
class PromptSet:
    train: list[str]
    eval: list[str]
    source: str = field(default="data.prompts", compare=False)  # names the source in messages
    train_where: list[str] | None = field(default=None, compare=False)  # each query's record (file:line, ...)
    eval_where: list[str] | None = field(default=None, compare=False)
    metrics: dict[str, float] = field(default_factory=dict, compare=False)  # data/* counts of fit_prompts

    def where(self, split: str, index: int) -> str:
        """Where query ``index`` of ``split`` ("train" or "eval") comes from."""
        named = self.train_where if split == "train" else self.eval_where
        if named is not None:
            return named[index]
        return f"{self.source}: {'training' if split == 'train' else 'held-out'} prompt {index + 1}"


# ---------------------------------------------------------------------------------------------
# shared: field mapping and selection
# ---------------------------------------------------------------------------------------------


def one_line(text: Any, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def field_names(record: dict) -> str:
    return ", ".join(repr(k)[1:-1] for k in sorted(record, key=str)) or "none"  # repr: one line, always


def extract_query(value: Any, field: str, where: str) -> str:
    """The query in ``value``: a non-empty string, or the content of the first user message of
    a chat-style message list. ``where`` names the record in the error."""
    if isinstance(value, str):
        if not value.strip():
            raise ConfigError(f"{where}: field '{field}' is an empty string; every prompt must be non-empty")
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(m, dict) for m in value):
        for message in value:
            if message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, str) and content.strip():
                    return content
                raise ConfigError(
                    f"{where}: field '{field}' has a first user message without non-empty string 'content'"
                )
        roles = ", ".join(sorted({str(m.get("role")) for m in value}))
        raise ConfigError(f"{where}: field '{field}' is a message list without a 'user' message (roles: {roles})")
    raise ConfigError(
        f"{where}: field '{field}' is {type(value).__name__}, expected a non-empty string "
        "or a list of {'role', 'content'} messages with a user message; set data.prompts.field"
    )


def record_query(record: dict, field: str, where: str) -> str:
    if field not in record:
        raise ConfigError(
            f"{where}: record has no non-empty string field '{field}' (its fields: {field_names(record)}); "
            "set data.prompts.field"
        )
    return extract_query(record[field], field, where)


def check_sizes(num_eval: int, limit: int | None) -> None:
    if not isinstance(num_eval, int) or isinstance(num_eval, bool) or num_eval < 0:
        raise ConfigError(f"data.prompts.num_eval={num_eval}: must be an integer >= 0")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ConfigError(f"data.prompts.limit={limit}: must be a positive integer or null (all records)")


def choose(n: int, limit: int | None, seed: int, shuffle: bool) -> list[int]:
    """Indices of the records to use: all ``n`` (seeded shuffle if asked), the first ``limit``."""
    order = list(range(n))
    if shuffle:
        random.Random(seed).shuffle(order)
    return order if limit is None else order[:limit]


def hold_out(queries: list[str], num_eval: int, source: str, where: list[str] | None = None) -> PromptSet:
    """The last ``num_eval`` queries are the eval set; at least one query must remain to train on.
    ``where`` names each query's record."""
    if len(queries) <= num_eval:
        raise ConfigError(
            f"{source}: {len(queries)} prompts, but data.prompts.num_eval={num_eval} are held out; "
            "add prompts or lower num_eval"
        )
    split = len(queries) - num_eval
    train_where, eval_where = (where[:split], where[split:]) if where is not None else (None, None)
    return PromptSet(queries[:split], queries[split:], source, train_where, eval_where)


# ---------------------------------------------------------------------------------------------
# local files
# ---------------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) for every non-blank line; a missing file or a bad line is a
    ConfigError naming it."""
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise ConfigError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            records.append((lineno, record))
    if not records:
        raise ConfigError(f"{path}: no records")
    return records


def read_json_array(path: Path) -> list[dict]:
    """Records of a ``.json`` file holding one JSON array of objects."""
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({one_line(e)})") from None
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
    for i, record in enumerate(data, start=1):
        if not isinstance(record, dict):
            raise ConfigError(f"{path}: record {i}: expected a JSON object, got {type(record).__name__}")
    if not data:
        raise ConfigError(f"{path}: no records")
    return data


def read_parquet(path: Path) -> list[dict]:
    """Rows of a ``.parquet`` file as dicts."""
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"{path}: reading .parquet needs pyarrow (pip install pyarrow)") from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a bad file
        raise ConfigError(f"{path}: not a valid Parquet file ({one_line(e)})") from None
    if not rows:
        raise ConfigError(f"{path}: no records")
    return rows


def read_records(path: Path) -> list[tuple[str, dict]]:
    """(where, record) for every record of a local prompt file, by extension."""
    suffix = path.suffix.lower()
    if suffix not in FILE_FORMATS:
        raise ConfigError(
            f"{path}: unknown prompt file extension '{path.suffix or '(none)'}' (valid: {', '.join(FILE_FORMATS)})"
        )
    if suffix == ".jsonl":
        return jsonl_records(path)
    records = read_json_array(path) if suffix == ".json" else read_parquet(path)
    return [(f"{path}: record {i}", record) for i, record in enumerate(records, start=1)]


def jsonl_records(path: Path) -> list[tuple[str, dict]]:
    """(``path:line``, record) for every record of a JSON-lines file."""
    return [(f"{path}:{lineno}", record) for lineno, record in read_jsonl(path)]


@dataclass
class PromptFile:
    """Queries from a local file, by extension: ``.jsonl`` (one JSON object per line), ``.json``
    (one JSON array of objects) or ``.parquet``. ``field`` names the query: a non-empty string or a
    chat-style message list (the first user message's content is used).

    Records are shuffled with ``seed`` when ``shuffle``, cut to the first ``limit``, and the last
    ``num_eval`` of those are held out for ``eval/quality``.
    """

    path: str
    field: str = "prompt"
    num_eval: int = 64
    limit: int | None = None
    seed: int = 0
    shuffle: bool = False

    def records(self) -> list[tuple[str, dict]]:
        return read_records(Path(self.path))

    def load(self) -> PromptSet:
        check_sizes(self.num_eval, self.limit)
        records = self.records()
        chosen = choose(len(records), self.limit, self.seed, self.shuffle)
        queries = [record_query(records[i][1], self.field, records[i][0]) for i in chosen]
        return hold_out(queries, self.num_eval, str(self.path), [records[i][0] for i in chosen])


@dataclass
class JsonlPrompts(PromptFile):
    """A :class:`PromptFile` read as JSON lines whatever its extension (``conf/data/jsonl.yaml``)."""

    def records(self) -> list[tuple[str, dict]]:
        return jsonl_records(Path(self.path))


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets
# ---------------------------------------------------------------------------------------------


def is_saved_dataset(path: Path) -> bool:
    """A directory written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return path.is_dir() and any((path / f).is_file() for f in ("state.json", "dataset_dict.json"))


@dataclass
class HFPrompts:
    """Queries from a Hugging Face dataset.

    ``name`` is a hub name (``HuggingFaceH4/ultrafeedback_binarized``), a local dataset directory or
    data file that ``datasets.load_dataset`` reads, or a directory written by ``save_to_disk``
    (read with ``datasets.load_from_disk``; a saved single ``Dataset`` is used whole, a saved
    ``DatasetDict`` by ``split``). ``subset`` is the hub configuration name, if any.

    ``field`` names the query column: strings, or chat-style message lists (the first user
    message's content is used). Records are shuffled with ``seed`` when ``shuffle``, then cut to the
    first ``limit`` (the paper used 8k queries). Held out for ``eval/quality``: ``num_eval`` records
    of ``eval_split`` when it is set (fewer if the split is smaller), otherwise the last ``num_eval``
    of the selected records. ``datasets`` is imported only when this source is used.
    """

    name: str
    split: str = "train"
    field: str = "prompt"
    subset: str | None = None
    eval_split: str | None = None
    num_eval: int = 64
    limit: int | None = None
    seed: int = 0
    shuffle: bool = False
    cache_dir: str | None = None

    def load(self) -> PromptSet:
        check_sizes(self.num_eval, self.limit)
        train, train_where = self.queries(self.split, self.limit)
        source = f"data.prompts.name={self.name}"
        if self.eval_split is None:
            return hold_out(train, self.num_eval, f"{source} split {self.split}", train_where)
        if not train:
            raise ConfigError(f"data.prompts.name={self.name}: split '{self.split}' has no records")
        held_out, eval_where = self.queries(self.eval_split, self.num_eval, option="eval_split")
        return PromptSet(train, held_out, source, train_where, eval_where)

    def queries(self, split: str, limit: int | None, option: str = "split") -> tuple[list[str], list[str]]:
        """The queries of ``split`` and where each comes from (its row)."""
        dataset = self.dataset(split, option)
        where = f"data.prompts.name={self.name} split {split}"
        columns = list(dataset.column_names)
        if self.field not in columns:
            raise ConfigError(
                f"{where}: no column '{self.field}' (its columns: {', '.join(columns) or 'none'}); "
                "set data.prompts.field"
            )
        chosen = choose(len(dataset), limit, self.seed, self.shuffle)
        values = dataset.select(chosen)[self.field] if chosen else []
        rows = [f"{where} row {i}" for i in chosen]
        return [extract_query(v, self.field, row) for row, v in zip(rows, values)], rows

    def dataset(self, split: str, option: str):
        try:
            import datasets
        except ImportError:
            raise ConfigError("data=hf needs the datasets package (pip install datasets)") from None
        path = Path(self.name).expanduser()
        if is_saved_dataset(path):
            try:
                loaded = datasets.load_from_disk(str(path))
            except Exception as e:
                raise ConfigError(f"data.prompts.name={self.name}: could not be loaded ({one_line(e)})") from None
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise ConfigError(
                        f"data.prompts.{option}={split}: not a split of {self.name} (valid: {', '.join(loaded)})"
                    )
                return loaded[split]
            if option == "eval_split":
                raise ConfigError(
                    f"data.prompts.eval_split={split}: {self.name} is a single saved Dataset without splits; "
                    "set data.prompts.eval_split=null to hold out the last num_eval records"
                )
            return loaded
        kwargs: dict[str, Any] = {"split": split}
        if self.cache_dir is not None:
            kwargs["cache_dir"] = self.cache_dir
        if path.is_file():  # one local data file: its builder by extension, its records as `split`
            builder = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(path.suffix.lower())
            if builder is None:
                raise ConfigError(
                    f"data.prompts.name={self.name}: unknown data file extension '{path.suffix or '(none)'}' "
                    "(valid: .jsonl, .json, .parquet, .csv, a dataset directory or a hub name)"
                )
            args: Sequence[Any] = (builder,)
            kwargs["data_files"] = {split: str(path)}
        else:
            args = (self.name, self.subset) if self.subset is not None else (self.name,)
        try:
            return datasets.load_dataset(*args, **kwargs)
        except Exception as e:  # offline hub, unknown name, bad split, ...: one line
            raise ConfigError(
                f"data.prompts.name={self.name}: could not be loaded ({type(e).__name__}: {one_line(e)})"
            ) from None


# ---------------------------------------------------------------------------------------------
# length: data.max_prompt_length and data.long_prompts
# ---------------------------------------------------------------------------------------------


def check_prompt_limit(max_tokens: Any, action: Any) -> None:
    """The options themselves, checked with the rest of the config."""
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise ConfigError(
            f"data.max_prompt_length={max_tokens} is not valid: it must be an integer >= 1 (tokens), or null (no limit)"
        )
    if action not in LONG_PROMPTS:
        raise ConfigError(f"data.long_prompts={action} is not valid (valid: {', '.join(LONG_PROMPTS)})")


def prompt_length(tokenizer, query: str) -> int:
    """Tokens of the plain prompt x: the query rendered with the chat template, ready for the answer."""
    from sso_lightning.data.steering import render_prompt

    return len(render_prompt(tokenizer, query))


def cut_query(tokenizer, query: str, max_tokens: int) -> str:
    """The longest start of ``query`` (whole tokens) whose prompt x fits ``max_tokens``."""
    ids = tokenizer(query, add_special_tokens=False)["input_ids"]
    low, high = 0, len(ids)  # the longest fitting start has between low and high tokens
    while low < high:
        middle = (low + high + 1) // 2
        if prompt_length(tokenizer, tokenizer.decode(ids[:middle])) <= max_tokens:
            low = middle
        else:
            high = middle - 1
    cut = tokenizer.decode(ids[:low]) if low else ""
    if not cut.strip() or prompt_length(tokenizer, cut) > max_tokens:
        raise ConfigError(
            f"data.max_prompt_length={max_tokens} leaves no room for a query: the chat template alone takes "
            f"{prompt_length(tokenizer, '')} tokens of it; raise data.max_prompt_length"
        )
    return cut


def fit_prompts(prompts: PromptSet, tokenizer, max_tokens: int | None, action: str) -> PromptSet:
    """Every query whose prompt x (the query rendered with the chat template; x+ and x- add their
    principle) is longer than ``max_tokens``: a ConfigError naming the first and the count
    (``refuse``), its first tokens that fit (``cut``), or left out (``skip``). The count cut or skipped
    is said once on stderr and kept in ``metrics`` as ``data/prompts_cut`` or ``data/prompts_skipped``
    (training and held-out prompts together)."""
    check_prompt_limit(max_tokens, action)
    if max_tokens is None:
        return prompts
    splits = {"train": (prompts.train, prompts.train_where), "eval": (prompts.eval, prompts.eval_where)}
    long = {split: {} for split in splits}  # split -> {index: tokens} of the queries that are too long
    for split, (queries, _) in splits.items():
        for i, query in enumerate(queries):
            tokens = prompt_length(tokenizer, query)
            if tokens > max_tokens:
                long[split][i] = tokens
    count, total = sum(map(len, long.values())), len(prompts.train) + len(prompts.eval)
    done = {"refuse": None, "cut": "cut", "skip": "skipped"}[action]
    metrics = {**prompts.metrics, f"data/prompts_{done}": float(count)} if done else prompts.metrics
    if not count:
        return replace(prompts, metrics=metrics)
    split = "train" if long["train"] else "eval"
    index, tokens = next(iter(long[split].items()))
    first = f"{prompts.where(split, index)}: a prompt of {tokens} tokens"
    if action == "refuse":
        raise ConfigError(
            f"{first}, longer than data.max_prompt_length={max_tokens} ({count} of {total} prompts are); "
            "set data.long_prompts=cut or skip, or raise data.max_prompt_length"
        )
    if action == "skip" and len(long["train"]) == len(prompts.train):
        raise ConfigError(
            f"all {len(prompts.train)} training prompts are longer than data.max_prompt_length={max_tokens} "
            f"(first: {first}); raise data.max_prompt_length or set data.long_prompts=cut"
        )
    fitted: dict[str, tuple[list[str], list[str] | None]] = {}
    for split, (queries, where) in splits.items():
        if action == "cut":
            fitted[split] = (
                [cut_query(tokenizer, q, max_tokens) if i in long[split] else q for i, q in enumerate(queries)],
                where,
            )
        else:
            kept = [i for i in range(len(queries)) if i not in long[split]]
            fitted[split] = ([queries[i] for i in kept], None if where is None else [where[i] for i in kept])
    unmeasured = (
        "; no held-out prompt is left, eval/quality is not measured" if prompts.eval and not fitted["eval"][0] else ""
    )
    print(
        f"note: {count} of {total} prompts ({len(long['train'])} training, {len(long['eval'])} held-out) are longer "
        f"than data.max_prompt_length={max_tokens} tokens and were {done} (data.long_prompts={action}; "
        f"first: {first}){unmeasured}",
        file=sys.stderr,
    )
    (train, train_where), (held_out, eval_where) = fitted["train"], fitted["eval"]
    return replace(prompts, train=train, eval=held_out, train_where=train_where, eval_where=eval_where, metrics=metrics)
