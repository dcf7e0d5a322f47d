"""Chat templates of real models: system role supported, rejected, silently dropped, or no template.

Each tokenizer is built offline (WordLevel + PreTrainedTokenizerFast), saved with
save_pretrained and loaded with AutoTokenizer.from_pretrained, the path a hub id takes.

Invariant checked (the prompt/response split): for every template, rendering the
whole conversation (system?, user, assistant answer) with
``apply_chat_template(..., tokenize=True, add_generation_prompt=False)`` gives exactly
``render_prompt(...)`` ids followed by the response ids, where the response ids are
``tokenizer(answer, add_special_tokens=False)`` plus the end-of-turn token (the EOS
token in these templates), which is what generation and batching train on.
"""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from sso_lightning.data import steering
from sso_lightning.data.principles import PrinciplePair
from sso_lightning.data.steering import render_prompt, steer, supports_system_role
from sso_lightning.errors import ConfigError

QUERY = "how do plants grow ?"
ANSWER = "plants grow from light and water ."
PRINCIPLES = PrinciplePair(("honesty",), "be honest and helpful .", "be vague and unhelpful .")

# Llama-3-like: system role supported; the assistant turn ends with <|eot_id|> (EOS).
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Gemma-like: raises on a system message; the model turn ends with <end_of_turn> (EOS).
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
# Mistral-like: silently drops system messages; the answer ends with </s> (EOS).
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)

KINDS = {
    # name: (template, special tokens, bos, eos = end-of-turn token)
    "system": (
        LLAMA3,
        ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "<|begin_of_text|>",
        "<|eot_id|>",
    ),
    "raises": (GEMMA, ["<bos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<end_of_turn>"),
    "drops": (MISTRAL, ["<s>", "</s>", "[INST]", "[/INST]"], "<s>", "</s>"),
    "none": (None, ["<s>", "</s>"], "<s>", "</s>"),
}


def build(tmp_path, kind: str):
    template, specials, bos, eos = KINDS[kind]
    words = {w for text in (QUERY, ANSWER, PRINCIPLES.good, PRINCIPLES.bad) for w in text.split()}
    words |= {"system", "user", "assistant", "model"}
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<unk>", *specials, *sorted(words)])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token=bos,
        eos_token=eos,
        additional_special_tokens=[s for s in specials if s not in (bos, eos)],
    )
    if template is not None:
        tok.chat_template = template
    path = tmp_path / kind
    tok.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture
def toks(tmp_path):
    return {kind: build(tmp_path, kind) for kind in KINDS}


def ids_of(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def contains(seq, sub):
    return any(seq[i : i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


def test_detection(toks):
    assert supports_system_role(toks["system"])
    assert not supports_system_role(toks["raises"])
    assert not supports_system_role(toks["drops"])


def test_system_role_renders_a_system_turn(toks):
    tok = toks["system"]
    prompt = steer(tok, QUERY, PRINCIPLES)
    messages = [{"role": "system", "content": PRINCIPLES.good}, {"role": "user", "content": QUERY}]
    expected = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]
    assert prompt.ids["x+"] == list(expected)
    assert contains(prompt.ids["x+"], tok.convert_tokens_to_ids(["<|start_header_id|>", "system", "<|end_header_id|>"]))
    assert contains(prompt.ids["x+"], ids_of(tok, PRINCIPLES.good))


@pytest.mark.parametrize("kind", ["raises", "drops"])
def test_fallback_puts_principle_in_user_turn(toks, kind):
    tok = toks[kind]
    prompt = steer(tok, QUERY, PRINCIPLES)
    for key, principle in (("x+", PRINCIPLES.good), ("x-", PRINCIPLES.bad)):
        merged = [{"role": "user", "content": f"{principle}\n\n{QUERY}"}]
        expected = tok.apply_chat_template(merged, add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
        assert prompt.ids[key] == list(expected)
        # principle then query, contiguous, inside the one user turn
        assert contains(prompt.ids[key], ids_of(tok, principle) + ids_of(tok, QUERY))
    assert prompt.ids["x+"] != prompt.ids["x"] != prompt.ids["x-"]


def test_query_alone_is_the_same_for_all_templates(toks):
    for kind in ("system", "raises", "drops"):
        tok = toks[kind]
        plain = tok.apply_chat_template(
            [{"role": "user", "content": QUERY}], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        assert render_prompt(tok, QUERY) == list(plain) == steer(tok, QUERY, PRINCIPLES).ids["x"]


@pytest.mark.parametrize("kind", ["system", "raises", "drops"])
@pytest.mark.parametrize("principle", [None, PRINCIPLES.good])
def test_prompt_response_split_is_exact(toks, kind, principle):
    tok = toks[kind]
    response = ids_of(tok, ANSWER) + [tok.eos_token_id]  # what generation keeps: up to and including EOS
    messages = steering.steering_messages(tok, QUERY, principle) + [{"role": "assistant", "content": ANSWER}]
    full = tok.apply_chat_template(messages, add_generation_prompt=False, tokenize=True, return_dict=True)["input_ids"]
    assert render_prompt(tok, QUERY, principle) + response == list(full)
    assert tok.unk_token_id not in full


def test_detection_is_cached_per_tokenizer(toks):
    tok = toks["raises"]
    calls = []
    original = tok.apply_chat_template

    def spy(*args, **kwargs):
        calls.append(kwargs.get("tokenize"))
        return original(*args, **kwargs)

    tok.apply_chat_template = spy
    for _ in range(3):
        steer(tok, QUERY, PRINCIPLES)
    assert calls.count(False) == 1  # one probe, then 9 renders
    assert calls.count(True) == 9


def test_no_chat_template_is_a_one_line_config_error(toks, tmp_path):
    tok = toks["none"]
    with pytest.raises(ConfigError) as err:
        render_prompt(tok, QUERY)
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "none") in message and "chat template is required" in message
    with pytest.raises(ConfigError):
        steer(tok, QUERY, PRINCIPLES)
