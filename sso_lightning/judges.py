"""Judges: who says how good an answer is, and so whether y+ beats y-.

A judge scores (query, response) pairs in [0, 1]; pair accuracy and policy quality
are computed from those scores, so a reward model or an LLM judge can replace
the toy oracle (``toy.oracle``) without touching the metrics code. Judges here:
``RewardModelJudge`` (a Hugging Face reward model) and ``LLMJudge`` (a local causal LM
asked pairwise, in both orders, and for ratings). :func:`pair_preferences` compares y+ with
y- through ``prefer`` when a judge has it, else through ``score``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from sso_lightning.errors import ConfigError
from sso_lightning.generation import Response, pad_batch
from sso_lightning.models import load_failure, resolve_dtype


class Judge(Protocol):
    """``score`` gives each (query, response) a quality in [0, 1]. A judge may also define
    ``prefer(queries, chosen, rejected) -> list[float]``, the probability (or share of
    verdicts) that chosen beats rejected; :func:`pair_preferences` uses it when present."""

    def score(self, queries: Sequence[str], responses: Sequence[Response]) -> list[float]: ...


def score_wins(chosen: Sequence[float], rejected: Sequence[float]) -> list[float]:
    """Per pair: 1 when the chosen answer scores higher, 0.5 on a tie, 0 otherwise."""
    return [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected, strict=True)]


def pair_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> float:
    """Share of pairs whose chosen answer scores higher; a tie counts one half."""
    wins = score_wins(chosen, rejected)
    return sum(wins) / len(wins) if wins else float("nan")


# ---------------------------------------------------------------------------------------------
# Pairwise preferences
# ---------------------------------------------------------------------------------------------


def pair_preferences(
    judge,
    queries: Sequence[str],
    chosen: Sequence[Response],
    rejected: Sequence[Response],
    chosen_scores: Sequence[float] | None = None,
    rejected_scores: Sequence[float] | None = None,
) -> list[float]:
    """For each pair, the share (or probability) that ``chosen`` is the better answer.

    A judge with a ``prefer`` method (a pairwise judge such as :class:`LLMJudge`) is asked
    directly. Any other judge is compared through ``score``: 1 when chosen scores higher,
    0.5 on a tie, 0 otherwise; pass ``chosen_scores``/``rejected_scores`` when they are
    already known to skip re-scoring. The mean of the result is the pair accuracy
    (for a score-only judge it equals ``pair_accuracy(chosen_scores, rejected_scores)``).
    """
    if not len(queries) == len(chosen) == len(rejected):
        raise ValueError(f"{len(queries)} queries, {len(chosen)} chosen, {len(rejected)} rejected")
    prefer = getattr(judge, "prefer", None)
    if callable(prefer):
        return [float(p) for p in prefer(queries, chosen, rejected)]
    c = list(chosen_scores) if chosen_scores is not None else judge.score(queries, chosen)
    r = list(rejected_scores) if rejected_scores is not None else judge.score(queries, rejected)
    return score_wins(c, r)


# ---------------------------------------------------------------------------------------------
# Hugging Face judges
# ---------------------------------------------------------------------------------------------


def check_lengths(queries: Sequence[str], *groups: Sequence[Response]) -> None:
    for g in groups:
        if len(g) != len(queries):
            raise ValueError(f"{len(queries)} queries but {len(g)} responses")


def _score_finished(queries: Sequence[str], responses: Sequence[Response], rate) -> list[float]:
    """Scores in [0, 1]: 0 for unfinished answers, ``rate(queries, texts)`` for the finished ones."""
    check_lengths(queries, responses)
    scores = [0.0] * len(queries)
    todo = [i for i, r in enumerate(responses) if r.finished]
    if todo:
        for i, s in zip(todo, rate([queries[i] for i in todo], [responses[i].text for i in todo])):
            scores[i] = s
    return scores


class _HFJudge:
    """Shared lazy loading: nothing is read from disk or the hub until the first call."""

    def __init__(self, name_or_path: str, batch_size: int, max_length: int, dtype: str):
        if batch_size < 1 or max_length < 2:
            raise ConfigError(f"judge: need batch_size >= 1 and max_length >= 2 (got {batch_size}, {max_length})")
        self.name_or_path, self.batch_size, self.max_length, self.dtype = name_or_path, batch_size, max_length, dtype
        self._model = None
        self._tokenizer = None

    auto_class_name: str  # the transformers Auto class that loads this judge's model

    def _load(self):
        if self._model is None:
            import torch
            from transformers import AutoTokenizer

            dtype = resolve_dtype(self.dtype, "judge.dtype")
            try:
                tokenizer = AutoTokenizer.from_pretrained(self.name_or_path)
                import transformers

                auto_class = getattr(transformers, self.auto_class_name)
                model = auto_class.from_pretrained(self.name_or_path, dtype=dtype)
            except (OSError, ValueError) as e:
                raise load_failure("judge.name_or_path", self.name_or_path, e) from None
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
            self._check(model, tokenizer)
            model.eval()
            model.to("cuda" if torch.cuda.is_available() else "cpu")
            self._model, self._tokenizer = model, tokenizer
        return self._model, self._tokenizer

    def _check(self, model, tokenizer) -> None:
        pass

    def _chat_ids(self, tokenizer, messages: list[dict], generation_prompt: bool) -> list[int]:
        """Ids of a conversation with the tokenizer's chat template; without one, the
        turns joined by blank lines (``add_special_tokens`` as the tokenizer does)."""
        if tokenizer.chat_template:
            kwargs = {"enable_thinking": False} if generation_prompt else {}
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt, **kwargs
            )
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer("\n\n".join(m["content"] for m in messages))["input_ids"]
        # Keep the end (the answer / the question asked), where the verdict is read.
        return list(ids)[-self.max_length :]


class RewardModelJudge(_HFJudge):
    """A Hugging Face reward model (``AutoModelForSequenceClassification`` with one label).

    Each (query, response) is rendered with the reward model's own chat template as a user
    turn followed by an assistant turn (without a template: ``query + "\\n\\n" + response``),
    truncated to its last ``max_length`` tokens, and scored in batches of ``batch_size``.
    The score is ``sigmoid(reward)``, so it lies in [0, 1] and keeps the reward model's
    ranking (a reward of 0 maps to 0.5). An unfinished response (no EOS) scores 0, the minimum.
    The model is loaded on first use, on GPU when there is one.
    """

    def __init__(self, name_or_path: str, batch_size: int = 16, max_length: int = 4096, dtype: str = "auto"):
        super().__init__(name_or_path, batch_size, max_length, dtype)

    auto_class_name = "AutoModelForSequenceClassification"

    def _check(self, model, tokenizer) -> None:
        if model.config.num_labels != 1:
            raise ConfigError(
                f"judge.name_or_path={self.name_or_path}: a reward model needs one output label "
                f"(it has {model.config.num_labels})"
            )
        text_config = model.config.get_text_config()
        if text_config.pad_token_id is None:
            text_config.pad_token_id = tokenizer.pad_token_id

    def score(self, queries: Sequence[str], responses: Sequence[Response]) -> list[float]:
        return _score_finished(
            queries, responses, lambda q, a: [1.0 / (1.0 + math.exp(-r)) for r in self.rewards(q, a)]
        )

    def rewards(self, queries: Sequence[str], answers: Sequence[str]) -> list[float]:
        """The raw reward of each (query, answer) text pair."""
        import torch

        model, tokenizer = self._load()
        device = next(model.parameters()).device
        rows = [
            self._chat_ids(tokenizer, [{"role": "user", "content": q}, {"role": "assistant", "content": a}], False)
            for q, a in zip(queries, answers)
        ]
        out: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(rows), self.batch_size):
                ids, mask = pad_batch(
                    rows[start : start + self.batch_size], tokenizer.pad_token_id, device, side="right"
                )
                logits = model(input_ids=ids, attention_mask=mask).logits
                out.extend(float(x) for x in logits[:, 0].float().cpu())
        return out


PAIRWISE_PROMPT = """You are judging two answers to the same request. Decide which answer serves the \
user better: it is correct, complete, follows the request exactly and says no more than needed. \
Ignore the order in which the answers are shown and their length as such.

[Request]
{query}

[Answer A]
{a}

[Answer B]
{b}

Which answer is better? Reply with a single letter: A or B."""

RATING_PROMPT = """You are judging an answer to a request. Rate how well it serves the user: it is \
correct, complete, follows the request exactly and says no more than needed.

[Request]
{query}

[Answer]
{answer}

Rate the answer from 0 (useless) to 9 (perfect). Reply with a single digit."""


class LLMJudge(_HFJudge):
    """A local Hugging Face causal LM as judge (the paper used GPT-4 for pairwise judgements).

    ``prefer`` shows both answers in both orders (chosen as A, then chosen as B) with
    :data:`PAIRWISE_PROMPT`, reads the next-token logits of the letters "A" and "B" right
    after the assistant turn starts, and averages the two orders, which cancels position bias:
    ``prefer(q, a, b) + prefer(q, b, a) == 1``. ``mode="probability"`` averages
    P(chosen) = softmax over the two letters; ``mode="vote"`` averages hard verdicts
    (1 / 0.5 on equal logits / 0), so a pair gets 1, 0.5 or 0. An unfinished answer loses
    to a finished one; two unfinished answers tie at 0.5.

    ``score`` (for ``eval/quality``) asks for a 0-9 rating with :data:`RATING_PROMPT` and
    returns the expected rating under the next-token distribution restricted to the digit
    tokens "0".."9", divided by 9, so it lies in [0, 1]; an unfinished answer scores 0.
    Single digits are used because many tokenizers split "10" into "1" "0".
    Prompts go through the judge's chat template as one user turn (without a template the
    prompt is followed by "\\nAnswer:"), truncated to the last ``max_length`` tokens.
    """

    def __init__(
        self,
        name_or_path: str,
        batch_size: int = 8,
        max_length: int = 4096,
        dtype: str = "auto",
        mode: str = "probability",
    ):
        if mode not in ("probability", "vote"):
            raise ConfigError(f"judge.mode={mode} is not valid (valid: probability, vote)")
        super().__init__(name_or_path, batch_size, max_length, dtype)
        self.mode = mode
        self._label_ids: dict[str, list[int]] = {}

    auto_class_name = "AutoModelForCausalLM"

    def _prompt_ids(self, tokenizer, prompt: str) -> list[int]:
        if tokenizer.chat_template:
            return self._chat_ids(tokenizer, [{"role": "user", "content": prompt}], True)
        return self._chat_ids(tokenizer, [{"role": "user", "content": prompt + "\nAnswer:"}], False)

    def _labels(self, tokenizer, labels: Sequence[str]) -> list[list[int]]:
        """For each label, the ids of its single-token spellings ("A" and " A")."""
        out = []
        for label in labels:
            if label not in self._label_ids:
                ids = []
                for text in (label, " " + label):
                    enc = tokenizer(text, add_special_tokens=False)["input_ids"]
                    if len(enc) == 1 and enc[0] != tokenizer.unk_token_id and enc[0] not in ids:
                        ids.append(enc[0])
                if not ids:
                    raise ConfigError(
                        f"judge.name_or_path={self.name_or_path}: the tokenizer has no single token for {label!r}"
                    )
                self._label_ids[label] = ids
            out.append(self._label_ids[label])
        taken = [i for ids in out for i in ids]
        if len(taken) != len(set(taken)):
            raise ConfigError(f"judge.name_or_path={self.name_or_path}: labels {list(labels)} share tokens")
        return out

    def label_logprobs(self, prompts: Sequence[str], labels: Sequence[str]):
        """log-softmax over ``labels`` of the next-token logits after each prompt: (n, len(labels))."""
        import torch

        model, tokenizer = self._load()
        label_ids = self._labels(tokenizer, labels)
        device = next(model.parameters()).device
        rows = [self._prompt_ids(tokenizer, p) for p in prompts]
        out = []
        with torch.inference_mode():
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start : start + self.batch_size]
                ids, mask = pad_batch(batch, tokenizer.pad_token_id, device, side="right")
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
                last = logits[torch.arange(len(batch), device=device), mask.sum(-1) - 1]
                per_label = torch.stack([torch.logsumexp(last[:, i], dim=-1) for i in label_ids], dim=-1)
                out.append(torch.log_softmax(per_label, dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros((0, len(labels)))

    def prefer(self, queries: Sequence[str], chosen: Sequence[Response], rejected: Sequence[Response]) -> list[float]:
        check_lengths(queries, chosen, rejected)
        prefs = [0.5] * len(queries)
        todo = []
        for i, (c, r) in enumerate(zip(chosen, rejected)):
            if c.finished and r.finished:
                todo.append(i)
            elif c.finished != r.finished:
                prefs[i] = 1.0 if c.finished else 0.0
        if not todo:
            return prefs
        prompts = [PAIRWISE_PROMPT.format(query=queries[i], a=chosen[i].text, b=rejected[i].text) for i in todo]
        prompts += [PAIRWISE_PROMPT.format(query=queries[i], a=rejected[i].text, b=chosen[i].text) for i in todo]
        logp = self.label_logprobs(prompts, ("A", "B"))
        n = len(todo)
        first, second = logp[:n], logp[n:]  # chosen shown as A, then chosen shown as B
        for k, i in enumerate(todo):
            if self.mode == "probability":
                p1, p2 = float(first[k, 0].exp()), float(second[k, 1].exp())
            else:
                p1 = score_wins([float(first[k, 0])], [float(first[k, 1])])[0]
                p2 = score_wins([float(second[k, 1])], [float(second[k, 0])])[0]
            prefs[i] = (p1 + p2) / 2
        return prefs

    def score(self, queries: Sequence[str], responses: Sequence[Response]) -> list[float]:
        return _score_finished(queries, responses, self.ratings)

    def ratings(self, queries: Sequence[str], answers: Sequence[str]) -> list[float]:
        """Expected 0-9 rating over the digit tokens, divided by 9."""
        import torch

        digits = [str(d) for d in range(10)]
        logp = self.label_logprobs([RATING_PROMPT.format(query=q, answer=a) for q, a in zip(queries, answers)], digits)
        expected = (logp.exp() * torch.arange(10, dtype=torch.float32)).sum(-1) / 9.0
        return [min(1.0, max(0.0, float(e))) for e in expected]
