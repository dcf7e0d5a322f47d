"""Steered prompts: the query x alone, and with the good (x+) or bad (x-) principle
as the system message, rendered with the tokenizer's own chat template.

Chat templates that have no system role. Some templates (Gemma-, older
Mistral-style) ``raise_exception('System role not supported')`` when the first
message is a system message; others silently drop it. For those the principle is
prepended to the user turn instead: the user message becomes
``"<principle>\\n\\n<query>"``. Whether a template supports a system role is
detected once per tokenizer (and chat template): a probe conversation with a
system message is rendered; if that raises, or the rendered text does not contain
the system text, the fallback is used. The query alone (x) is rendered the same
way either way. A tokenizer without any chat template is a ``ConfigError``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from sso_lightning.data.principles import PrinciplePair
from sso_lightning.errors import ConfigError

_PROBE_SYSTEM = "SSO-PROBE-SYSTEM-7f3a"
_PROBE_USER = "SSO-PROBE-USER-7f3a"
# tokenizer -> (its chat template when decided, supports a system role)
_SYSTEM_ROLE_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class SteeredPrompt:
    query: str
    principles: PrinciplePair
    ids: dict[str, list[int]]  # "x", "x+", "x-": prompt token ids ending with the assistant header


def _tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__


def require_chat_template(tokenizer) -> None:
    """Raise a one-line ConfigError if ``tokenizer`` has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"tokenizer {_tokenizer_name(tokenizer)!r} has no chat template; SSO renders prompts with the "
            "tokenizer's chat template, so a chat template is required (use a chat/instruct model's tokenizer "
            "or set tokenizer.chat_template)"
        )


def supports_system_role(tokenizer) -> bool:
    """Whether the chat template renders a system message (decided once per tokenizer and template)."""
    require_chat_template(tokenizer)
    template = str(tokenizer.chat_template)
    cached = _SYSTEM_ROLE_CACHE.get(tokenizer)
    if cached is not None and cached[0] == template:
        return cached[1]
    probe = [{"role": "system", "content": _PROBE_SYSTEM}, {"role": "user", "content": _PROBE_USER}]
    try:
        text = tokenizer.apply_chat_template(probe, add_generation_prompt=True, tokenize=False)
        supported = isinstance(text, str) and _PROBE_SYSTEM in text
    except Exception:  # jinja2 TemplateError from raise_exception(...), or anything the template does
        supported = False
    _SYSTEM_ROLE_CACHE[tokenizer] = (template, supported)
    return supported


def steering_messages(tokenizer, query: str, system: str | None = None) -> list[dict[str, str]]:
    """The one-turn conversation: system + user, or the system text prepended to the user turn."""
    if not system:
        return [{"role": "user", "content": query}]
    if supports_system_role(tokenizer):
        return [{"role": "system", "content": system}, {"role": "user", "content": query}]
    return [{"role": "user", "content": f"{system}\n\n{query}"}]


def render_prompt(tokenizer, query: str, system: str | None = None) -> list[int]:
    """Token ids of a one-turn conversation, ready for the assistant's answer."""
    require_chat_template(tokenizer)
    messages = steering_messages(tokenizer, query, system)
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(encoded["input_ids"])


def steer(tokenizer, query: str, principles: PrinciplePair, system: str | None = None) -> SteeredPrompt:
    """The query as x (with ``system``, if any, as its system message), x+ and x-."""
    return SteeredPrompt(
        query=query,
        principles=principles,
        ids={
            "x": render_prompt(tokenizer, query, system),
            "x+": render_prompt(tokenizer, query, principles.good),
            "x-": render_prompt(tokenizer, query, principles.bad),
        },
    )
