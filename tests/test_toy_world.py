"""The toy world: the digit-sorting task and its oracle, the scripted teacher, the word-level
tokenizer and the toy judge. Every expectation is hand-computed or comes from a naive
re-implementation written here, independent of the package code."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from transformers import AutoTokenizer

from sso_lightning.errors import ConfigError
from sso_lightning.generation import Response
from sso_lightning.judges import pair_accuracy
from sso_lightning.toy.oracle import ToyOracle
from sso_lightning.toy.task import (
    DIGITS,
    FILLER_WORDS,
    ToyPrompts,
    feature_scores,
    oracle_score,
    query_digits,
)
from sso_lightning.toy.teacher import Teacher
from sso_lightning.toy.tokenizer import EOS, PAD, ROLE_TOKENS, UNK, build_toy_tokenizer

# ---------------------------------------------------------------------------------------------
# task.py
# ---------------------------------------------------------------------------------------------


def naive_scores(query: str, answer: str) -> dict[str, float]:
    """The oracle's definition, written out independently (brute-force counting)."""
    wanted = query.split()[1:]
    words = answer.split()
    digits = [w for w in words if len(w) == 1 and w.isdigit()]
    fillers = len(words) - len(digits)
    concision = max(0.0, 1.0 - fillers / 4.0)
    if not digits:
        return {"order": 0.0, "completeness": 0.0, "concision": concision}
    inversions = 0
    for i in range(len(digits)):
        for j in range(len(digits)):
            if i < j and int(digits[i]) > int(digits[j]):
                inversions += 1
    remaining = list(wanted)
    overlap = 0
    for d in digits:
        if d in remaining:
            remaining.remove(d)
            overlap += 1
    return {
        "order": max(0.0, 1.0 - inversions / len(digits)),
        "completeness": overlap / max(len(digits), len(wanted)),
        "concision": concision,
    }


def inversions(digits: list[str]) -> int:
    return sum(1 for i in range(len(digits)) for j in range(i + 1, len(digits)) if int(digits[i]) > int(digits[j]))


def test_query_digits_parses_toy_queries():
    assert query_digits("sort 3 1 4 1 5") == ["3", "1", "4", "1", "5"]
    assert query_digits("  sort   7 ") == ["7"]


@pytest.mark.parametrize(
    "query",
    ["sort", "", "Sort 1 2", "order 1 2", "sort 12 3", "sort 1 a", "sort -1", "what is 1 + 2", "sort 1.5", "1 2 sort"],
)
def test_query_digits_rejects_non_toy_queries(query):
    with pytest.raises(ValueError, match="not a toy-world query"):
        query_digits(query)


Q = "sort 3 1 4 1 5"  # ideal answer: 1 1 3 4 5


@pytest.mark.parametrize(
    "answer, order, completeness, concision",
    [
        ("1 1 3 4 5", 1.0, 1.0, 1.0),  # perfect
        ("1 1 4 3 5", 1 - 1 / 5, 1.0, 1.0),  # one adjacent swap of 5 digits: one inversion
        ("1 3 1 4 5", 1 - 1 / 5, 1.0, 1.0),  # another adjacent swap
        ("1 1 3 4", 1.0, 4 / 5, 1.0),  # a dropped digit
        ("1 3 4 5", 1.0, 4 / 5, 1.0),  # one of the two 1s dropped
        ("1 1 3 4 5 9", 1.0, 5 / 6, 1.0),  # an extra digit
        ("1 1 1 3 4 5", 1.0, 5 / 6, 1.0),  # an extra copy of a wanted digit
        ("well 1 1 3 4 5", 1.0, 1.0, 0.75),  # one filler word
        ("well ok so 1 1 3 4 5", 1.0, 1.0, 0.25),  # three filler words
        ("well ok so hmm 1 1 3 4 5", 1.0, 1.0, 0.0),  # four: concision 0
        ("well ok so hmm the 1 1 3 4 5", 1.0, 1.0, 0.0),  # five: clamped at 0
        ("5 4 3 1 1", 0.0, 1.0, 1.0),  # reversed: 9 inversions / 5 -> clamped at 0
        ("3 1 2", 1 - 2 / 3, 2 / 5, 1.0),  # 2 inversions of 3 digits; overlap {3, 1} of 5 wanted
        ("7 8 9", 1.0, 0.0, 1.0),  # no wanted digit at all
        ("well ok", 0.0, 0.0, 0.5),  # no digits
    ],
)
def test_feature_scores_hand_computed(answer, order, completeness, concision):
    got = feature_scores(Q, answer)
    assert got == pytest.approx({"order": order, "completeness": completeness, "concision": concision})
    assert oracle_score(Q, answer, finished=True) == pytest.approx(order * completeness * concision)


def test_one_adjacent_swap_costs_one_over_n():
    for n in range(2, 10):
        digits = [str(d) for d in range(n)]
        query = "sort " + " ".join(reversed(digits))
        for i in range(n - 1):
            swapped = digits[:]
            swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
            assert oracle_score(query, " ".join(swapped), True) == pytest.approx(1 - 1 / n)


def test_oracle_perfect_unfinished_and_empty():
    assert oracle_score(Q, "1 1 3 4 5", finished=True) == 1.0
    assert oracle_score(Q, "1 1 3 4 5", finished=False) == 0.0  # not finished: 0 whatever the text
    assert oracle_score(Q, "", finished=True) == 0.0
    assert oracle_score(Q, "   ", finished=True) == 0.0
    assert oracle_score(Q, "well ok", finished=True) == 0.0  # no digits: order and completeness 0
    with pytest.raises(ValueError):
        oracle_score("tell me a joke", "1 2", finished=True)


def test_feature_scores_match_naive_implementation_on_random_answers():
    rng = random.Random(7)
    vocab = list(DIGITS) + list(FILLER_WORDS)
    for _ in range(400):
        query = "sort " + " ".join(rng.choice(DIGITS) for _ in range(rng.randint(1, 8)))
        answer = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 10)))
        expected = naive_scores(query, answer)
        assert feature_scores(query, answer) == pytest.approx(expected)
        product = expected["order"] * expected["completeness"] * expected["concision"]
        assert oracle_score(query, answer, True) == pytest.approx(product if answer.strip() else 0.0)


def test_toy_prompts_sizes_digits_and_seeding():
    prompts = ToyPrompts(num_train=300, num_eval=40, min_digits=2, max_digits=5, seed=3).load()
    assert len(prompts.train) == 300 and len(prompts.eval) == 40
    counts = Counter()
    for q in prompts.train + prompts.eval:
        digits = query_digits(q)  # raises if not a valid toy query
        assert q.split()[0] == "sort"
        assert 2 <= len(digits) <= 5
        counts[len(digits)] += 1
    assert set(counts) == {2, 3, 4, 5}  # both ends of the inclusive range occur

    again = ToyPrompts(num_train=300, num_eval=40, min_digits=2, max_digits=5, seed=3).load()
    assert again == prompts  # same seed -> identical queries
    other = ToyPrompts(num_train=300, num_eval=40, min_digits=2, max_digits=5, seed=4).load()
    assert other.train != prompts.train and other.eval != prompts.eval

    fixed = ToyPrompts(num_train=50, num_eval=10, min_digits=3, max_digits=3, seed=0).load()
    assert all(len(query_digits(q)) == 3 for q in fixed.train + fixed.eval)


# ---------------------------------------------------------------------------------------------
# teacher.py
# ---------------------------------------------------------------------------------------------

FEATURES = ("order", "completeness", "concision")
STATES = ("good", "bad", "plain")


def queries(n: int, seed: int = 0, low: int = 2, high: int = 8) -> list[str]:
    rng = random.Random(seed)
    return ["sort " + " ".join(rng.choice(DIGITS) for _ in range(rng.randint(low, high))) for _ in range(n)]


def principles(states: dict[str, str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    good = tuple(f for f in FEATURES if states[f] == "good")
    bad = tuple(f for f in FEATURES if states[f] == "bad")
    return good, bad


def all_state_combinations(fixed: str, state: str):
    others = [f for f in FEATURES if f != fixed]
    for a in STATES:
        for b in STATES:
            yield {fixed: state, others[0]: a, others[1]: b}


def split(answer: str) -> tuple[list[str], list[str]]:
    words = answer.split()
    return [w for w in words if w in DIGITS], [w for w in words if w not in DIGITS]


@pytest.mark.parametrize("bad_errors", ["blatant", "subtle"])
@pytest.mark.parametrize("feature", FEATURES)
def test_good_feature_never_has_that_features_error(bad_errors, feature):
    teacher = Teacher(bad_errors=bad_errors)
    rng = random.Random(11)
    for k, states in enumerate(all_state_combinations(feature, "good")):
        good, bad = principles(states)
        for q in queries(60, seed=k):
            answer = teacher.answer(q, good, bad, rng)
            digits, fillers = split(answer)
            assert feature_scores(q, answer)[feature] == 1.0, (states, q, answer)
            if feature == "order":
                assert digits == sorted(digits)
            elif feature == "completeness":
                assert Counter(digits) == Counter(query_digits(q))
            else:
                assert fillers == []


def test_all_good_is_the_ideal_answer():
    rng = random.Random(0)
    for q in queries(100):
        assert Teacher().answer(q, FEATURES, (), rng) == " ".join(sorted(query_digits(q)))


def test_bad_order_blatant_shuffles_subtle_slips():
    blatant, subtle = Teacher(bad_errors="blatant"), Teacher(bad_errors="subtle")
    rng = random.Random(5)
    blatant_inv, subtle_inv = [], []
    for q in queries(400, seed=1, low=3, high=8):
        wanted = query_digits(q)
        distinct = len(set(wanted)) > 1
        for teacher, store in ((blatant, blatant_inv), (subtle, subtle_inv)):
            digits, fillers = split(teacher.answer(q, ("completeness", "concision"), ("order",), rng))
            assert fillers == [] and Counter(digits) == Counter(wanted)  # a permutation of the query
            if teacher is blatant and distinct:
                assert digits != sorted(digits)  # shuffled away from the sorted order
            store.append(inversions(digits))
    # subtle: 2 or 3 adjacent swaps of the sorted list -> at most 3 inversions (each swap adds <= 1)
    assert max(subtle_inv) <= 3 and sum(subtle_inv) > 0
    # blatant: a real shuffle, which often needs many more than 3 adjacent swaps
    assert max(blatant_inv) > 3
    assert sum(blatant_inv) / len(blatant_inv) > sum(subtle_inv) / len(subtle_inv) + 1


def test_plain_order_is_at_most_one_adjacent_swap():
    rng = random.Random(2)
    seen = Counter()
    for q in queries(400, seed=2, low=3, high=8):
        digits, _ = split(Teacher().answer(q, ("completeness", "concision"), (), rng))
        assert Counter(digits) == Counter(query_digits(q))
        seen[inversions(digits)] += 1
    assert set(seen) <= {0, 1} and seen[1] > 0 and seen[0] > 0


def test_bad_completeness_and_concision_blatant_vs_subtle():
    rng = random.Random(9)
    for q in queries(300, seed=3, low=2, high=8):
        wanted = query_digits(q)
        n = len(wanted)
        for bad_errors in ("blatant", "subtle"):
            digits, _ = split(Teacher(bad_errors=bad_errors).answer(q, ("order", "concision"), ("completeness",), rng))
            assert not Counter(digits) - Counter(wanted)  # only digits of the query
            dropped = n - len(digits)
            if bad_errors == "blatant":
                assert dropped == min(max(1, n // 2), n - 1)
            else:
                assert 1 <= dropped <= min(2, n - 1)
            digits, fillers = split(
                Teacher(bad_errors=bad_errors).answer(q, ("order", "completeness"), ("concision",), rng)
            )
            assert digits == sorted(wanted)
            assert all(w in FILLER_WORDS for w in fillers)
            assert (4 <= len(fillers) <= 6) if bad_errors == "blatant" else (1 <= len(fillers) <= 2)


def test_plain_completeness_and_concision_slips():
    rng = random.Random(4)
    dropped, fillers_seen = Counter(), Counter()
    for q in queries(400, seed=4):
        digits, fillers = split(Teacher().answer(q, ("order",), (), rng))
        dropped[len(query_digits(q)) - len(digits)] += 1
        fillers_seen[len(fillers)] += 1
        assert all(w in FILLER_WORDS for w in fillers)
    assert set(dropped) == {0, 1}
    assert set(fillers_seen) == {0, 1, 2}


@pytest.mark.parametrize("bad_errors", ["blatant", "subtle"])
def test_plain_teacher_mean_score_between_bad_and_good(bad_errors):
    teacher = Teacher(bad_errors=bad_errors)
    rng = random.Random(123)
    qs = queries(500, seed=10, low=4, high=7)

    def mean(good, bad):
        return sum(oracle_score(q, teacher.answer(q, good, bad, rng), True) for q in qs) / len(qs)

    good, plain, bad = mean(FEATURES, ()), mean((), ()), mean((), FEATURES)
    assert good == 1.0
    assert bad < plain < good
    assert plain < 0.95 and plain - bad > 0.05  # strictly, with a margin
    if bad_errors == "blatant":
        assert bad == 0.0  # >= 4 filler words always zero concision


def test_teacher_deterministic_given_rng_seed():
    qs = queries(100, seed=6)
    teacher = Teacher(bad_errors="subtle")

    def run(seed):
        rng = random.Random(seed)
        return [teacher.answer(q, ("order",), ("concision",), rng) for q in qs] + [
            teacher.answer(q, (), (), rng) for q in qs
        ]

    assert run(1) == run(1)
    assert run(1) != run(2)


@pytest.mark.parametrize("bad_errors", ["", "Blatant", "mild", None])
def test_invalid_bad_errors_raises(bad_errors):
    with pytest.raises(ValueError, match="bad_errors must be one of"):
        Teacher(bad_errors=bad_errors)


# ---------------------------------------------------------------------------------------------
# tokenizer.py
# ---------------------------------------------------------------------------------------------

TEXTS = ["sort 3 1 4", "list the digits from small to large", "well ok so", "the answer is here"]


def test_every_word_gets_its_own_known_id():
    tok = build_toy_tokenizer(TEXTS)
    words = sorted({w for t in TEXTS for w in t.split()})
    ids = [tok.convert_tokens_to_ids(w) for w in words]
    assert tok.unk_token_id not in ids
    assert len(set(ids)) == len(words)  # distinct words, distinct ids
    assert len(tok) == len(words) + 3 + len(ROLE_TOKENS)  # words + pad/unk/eos + role tokens
    for text in TEXTS:
        encoded = tok(text, add_special_tokens=False)["input_ids"]
        assert encoded == [tok.convert_tokens_to_ids(w) for w in text.split()]
    assert tok("sort zebra 3", add_special_tokens=False)["input_ids"][1] == tok.unk_token_id
    assert (tok.pad_token, tok.unk_token, tok.eos_token) == (PAD, UNK, EOS)
    assert len({tok.pad_token_id, tok.unk_token_id, tok.eos_token_id}) == 3


def test_chat_template_renders_turns_in_order():
    tok = build_toy_tokenizer(TEXTS)
    messages = [
        {"role": "system", "content": "list the digits from small to large"},
        {"role": "user", "content": "sort 3 1 4"},
        {"role": "assistant", "content": "well 1 3 4"},
    ]
    ids = tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    expected = (
        ["<|system|>", "list", "the", "digits", "from", "small", "to", "large", EOS]
        + ["<|user|>", "sort", "3", "1", "4", EOS]
        + ["<|assistant|>", "well", "1", "3", "4", EOS]
    )
    assert tok.convert_ids_to_tokens(list(ids)) == expected

    prompt = tok.apply_chat_template(messages[:2], add_generation_prompt=True, tokenize=True, return_dict=True)
    assert tok.convert_ids_to_tokens(list(prompt["input_ids"])) == expected[:15] + ["<|assistant|>"]


def test_save_and_reload_gives_same_ids(tmp_path):
    tok = build_toy_tokenizer(TEXTS)
    messages = [{"role": "system", "content": "well ok so"}, {"role": "user", "content": "sort 4 1 3"}]
    before = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    after = loaded.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]
    assert list(after) == list(before)
    assert (loaded.eos_token_id, loaded.pad_token_id, loaded.unk_token_id) == (
        tok.eos_token_id,
        tok.pad_token_id,
        tok.unk_token_id,
    )
    assert loaded.get_vocab() == tok.get_vocab()


# ---------------------------------------------------------------------------------------------
# judges.py
# ---------------------------------------------------------------------------------------------


def test_toy_oracle_equals_oracle_score():
    qs = ["sort 3 1 4 1 5", "sort 3 1 4 1 5", "sort 2 1", "sort 2 1", "sort 9"]
    responses = [
        Response(ids=(1,), text="1 1 3 4 5", finished=True),
        Response(ids=(1,), text="1 1 3 4 5", finished=False),
        Response(ids=(1,), text="well 2 1", finished=True),
        Response(ids=(1,), text="", finished=True),
        Response(ids=(1,), text="9 9", finished=True),
    ]
    scores = ToyOracle().score(qs, responses)
    assert scores == pytest.approx([1.0, 0.0, 0.75 * 0.5, 0.0, 0.5])
    assert scores == [oracle_score(q, r.text, r.finished) for q, r in zip(qs, responses)]


def test_toy_oracle_rejects_non_toy_query_with_config_error():
    with pytest.raises(ConfigError, match="toy_oracle") as err:
        ToyOracle().score(["sort 1 2", "Write a poem"], [Response((1,), "1 2", True)] * 2)
    assert "\n" not in str(err.value)


def test_toy_oracle_length_mismatch_is_not_blamed_on_the_prompts():
    try:
        ToyOracle().score(["sort 1 2", "sort 2 1"], [Response((1,), "1 2", True)])
    except ConfigError as e:
        assert "toy-world" not in str(e)
    except ValueError:
        pass  # a plain programming error is fine


def test_pair_accuracy_with_ties_and_empty():
    assert pair_accuracy([0.9, 0.5, 0.2, 0.0], [0.1, 0.5, 0.3, 0.0]) == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)
    assert pair_accuracy([1.0], [0.0]) == 1.0
    assert pair_accuracy([0.0, 0.0], [1.0, 1.0]) == 0.0
    assert math.isnan(pair_accuracy([], []))
    with pytest.raises(ValueError):
        pair_accuracy([1.0, 0.5], [0.0])
