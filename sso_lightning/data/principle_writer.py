"""Principles written by a model, following the paper's two-step procedure.

1. Ask which ``num_features`` of the library's features (the paper's seven: Safety,
   Logicality, Comprehensiveness, Helpfulness, Literariness, Accuracy, Engagement) matter
   most for the query.
2. Per chosen feature, ask for a JSON object {"good": ..., "bad": ...}: a principle that
   follows the feature and one that violates it.

A step-1 reply naming no known feature falls back to the library's seeded choice; a
step-2 reply that does not parse falls back to the library's principle for that feature.
Both are counted (``stats``). With ``concision_probability`` the library's concision pair is
added. Principles are cached per query, so every iteration reuses them, as in the paper.
The principle model is the policy itself (``model: null``; bound at the start of training)
or a separate model by hub id or directory. The prompt texts are this project's own.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from sso_lightning.data.principles import PrincipleLibrary, PrinciplePair
from sso_lightning.data.steering import render_prompt
from sso_lightning.engines.hf import Engine as HFGenerate
from sso_lightning.generation import Sampling

FEATURE_PROMPT = (
    "Here is a user query:\n\n{query}\n\n"
    "Which {n} of these qualities matter most for a good answer to it: {features}? "
    "Reply with the {n} quality names only, separated by commas."
)
PRINCIPLE_PROMPT = (
    "Here is a user query:\n\n{query}\n\n"
    "Write two one-sentence instructions for an assistant answering it, about {feature}: "
    "a good one that makes the answer excel in {feature}, and a bad one that makes it fail in {feature}. "
    'Reply with a JSON object only: {{"good": "...", "bad": "..."}}'
)


@dataclass
class GeneratedPrinciples:
    library: PrincipleLibrary  # the features, their fallback principles, concision and seed
    model: str | None = None  # a separate principle model (hub id or dir); None = the policy itself
    num_features: int = 2
    max_new_tokens: int = 256
    batch_size: int = 16
    cache: dict[str, PrinciplePair] = field(default_factory=dict, repr=False)
    stats: Counter = field(default_factory=Counter, repr=False)

    def __post_init__(self):
        self._model = self._tokenizer = None
        self._engine = HFGenerate()  # a separate principle model answers through Hugging Face generate

    def bind(self, model, tokenizer, engine=None) -> None:
        """Use the policy as principle model, through the run's engine (when no separate one is configured)."""
        if self.model is None:
            self._model, self._tokenizer = model, tokenizer
            self._engine = engine or self._engine

    def for_queries(self, queries: Sequence[str]) -> list[PrinciplePair]:
        new = [q for q in dict.fromkeys(queries) if q not in self.cache]
        if new:
            self.write(new)
        return [self.cache[q] for q in queries]

    def write(self, queries: list[str]) -> None:
        names = list(self.library.features)
        replies = self.complete(
            [
                FEATURE_PROMPT.format(query=q, n=self.num_features, features=", ".join(n.capitalize() for n in names))
                for q in queries
            ]
        )
        chosen = {q: self.parse_features(q, reply) for q, reply in zip(queries, replies)}
        requests = [(q, f) for q in queries for f in chosen[q]]
        replies = self.complete([PRINCIPLE_PROMPT.format(query=q, feature=f.capitalize()) for q, f in requests])
        written = {(q, f): self.parse_pair(f, reply) for (q, f), reply in zip(requests, replies)}
        for q in queries:
            features, pairs = list(chosen[q]), [written[q, f] for f in chosen[q]]
            if self.library.choice(q)[1]:
                features.append("concision")
                pairs.append(dict(self.library.concision))
            sep = self.library.separator
            self.cache[q] = PrinciplePair(
                tuple(features), sep.join(p["good"] for p in pairs), sep.join(p["bad"] for p in pairs)
            )

    def parse_features(self, query: str, reply: str) -> tuple[str, ...]:
        """Known feature names in the order the reply mentions them, at most num_features."""
        found = sorted(
            (m.start(), name)
            for name in self.library.features
            if (m := re.search(rf"\b{re.escape(name)}\b", reply, re.IGNORECASE))
        )
        names = tuple(dict.fromkeys(name for _, name in found))[: self.num_features]
        if names:
            self.stats["features_parsed"] += 1
            return names
        self.stats["features_fallback"] += 1
        return tuple(self.library.choice(query)[0])

    def parse_pair(self, feature: str, reply: str) -> dict[str, str]:
        """The first JSON object with non-empty string 'good' and 'bad', else the library's pair."""
        match = re.search(r"\{.*?\}", reply, re.DOTALL)
        try:
            pair = json.loads(match.group(0)) if match else None
        except json.JSONDecodeError:
            pair = None
        if isinstance(pair, dict) and all(isinstance(pair.get(k), str) and pair[k].strip() for k in ("good", "bad")):
            self.stats["principles_parsed"] += 1
            return {"good": pair["good"].strip(), "bad": pair["bad"].strip()}
        self.stats["principles_fallback"] += 1
        return dict(self.library.features[feature])

    def complete(self, prompts: list[str]) -> list[str]:
        """Greedy replies of the principle model, one per prompt."""
        model, tokenizer = self.principle_model()
        ids = [render_prompt(tokenizer, p) for p in prompts]
        sampling = Sampling(temperature=0.0, top_p=1.0, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size)
        return [r.text for r in self._engine.generate(model, tokenizer, ids, sampling)]

    def principle_model(self):
        if self._model is None:
            if self.model is None:
                raise RuntimeError("principles.model is null (use the policy) but no policy was bound")
            from sso_lightning.models import PretrainedPolicy

            self._model, self._tokenizer = PretrainedPolicy(self.model).load(path_option="principles.model")
        return self._model, self._tokenizer

    def state_dict(self) -> dict:
        """The principles written so far (a resumed run reuses them, as every iteration does)."""
        return {"cache": dict(self.cache), "stats": dict(self.stats)}

    def load_state_dict(self, state: dict) -> None:
        self.cache, self.stats = dict(state["cache"]), Counter(state["stats"])

    def metrics(self) -> dict[str, float]:
        """Fallback fractions so far (what share of replies did not parse)."""
        out = {}
        for step in ("features", "principles"):
            total = self.stats[f"{step}_parsed"] + self.stats[f"{step}_fallback"]
            if total:
                out[f"data/{step}_fallback_fraction"] = self.stats[f"{step}_fallback"] / total
        return out
