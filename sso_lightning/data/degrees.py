"""SPO's degree variants: one response with more and more of its key content removed.

Li et al. (2024) make responses of known "preference degree" by deleting key phrases
found with RAKE; the number (or share) deleted is the label a classifier learns. A key
item is a ranked unit of key content with every place it occurs in the text; variant k
deletes the top items for degree k. In the toy world the key content is the answer's
digits, each occurrence an item, so the labels are exact.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from sso_lightning.errors import ConfigError

Span = tuple[int, int]
EXTRACTORS = ("rake", "toy")
UNITS = ("count", "share")
RESPONSES = {"chosen": ("y+",), "rejected": ("y-",), "both": ("y+", "y-")}


def rake_items(text: str) -> list[list[Span]]:
    """RAKE key phrases (python-rake, its SMART stopword list), best first; each with the
    spans of all its case-insensitive, whole-word occurrences."""
    import RAKE

    phrases = [p for p, _ in RAKE.Rake(RAKE.SmartStopList()).run(text, minCharacters=1, maxWords=5, minFrequency=1)]
    items = []
    for phrase in phrases:
        pattern = r"(?<!\w)" + r"\W+".join(map(re.escape, phrase.split())) + r"(?!\w)"
        spans = [m.span() for m in re.finditer(pattern, text, flags=re.IGNORECASE)]
        if spans:
            items.append(spans)
    return items


def toy_items(text: str, seed: int) -> list[list[Span]]:
    """The toy answer's digits, each occurrence one item, in a seeded random order (any
    digit removed costs the same completeness, so the order carries no information)."""
    items = [[m.span()] for m in re.finditer(r"(?<!\S)\d(?!\S)", text)]
    random.Random(f"{seed}:{text}").shuffle(items)
    return items


def remove_spans(text: str, spans: list[Span]) -> str:
    """The text without the spans, whitespace runs closed up."""
    kept, last = [], 0
    for start, end in sorted(spans):
        kept.append(text[last:start])
        last = max(last, end)
    kept.append(text[last:])
    return "\n".join(re.sub(r"[ \t]{2,}", " ", line).strip() for line in "".join(kept).split("\n")).strip()


@dataclass(frozen=True)
class DegreeVariants:
    """Variants k = 0..num_degrees of a response: ``count`` removes the top k key items,
    ``share`` the top round(k / num_degrees * items). A variant that would be empty, or
    that removes no more than the previous one, is left out, so labels stay unambiguous."""

    num_degrees: int = 3
    unit: str = "count"
    extractor: str = "rake"
    seed: int = 0

    def __post_init__(self):
        if self.num_degrees < 1:
            raise ConfigError(f"loss.aux.num_degrees must be >= 1 (got {self.num_degrees})")
        if self.unit not in UNITS:
            raise ConfigError(f"loss.aux.unit={self.unit} is not valid (valid: {', '.join(UNITS)})")
        if self.extractor not in EXTRACTORS:
            raise ConfigError(f"loss.aux.extractor={self.extractor} is not valid (valid: {', '.join(EXTRACTORS)})")

    def items(self, text: str) -> list[list[Span]]:
        return rake_items(text) if self.extractor == "rake" else toy_items(text, self.seed)

    def __call__(self, text: str) -> list[tuple[str, int]]:
        """(variant text, degree label) pairs, label 0 (the response itself) first."""
        items = self.items(text)
        variants, previous = [], -1
        for k in range(self.num_degrees + 1):
            removed = k if self.unit == "count" else round(k / self.num_degrees * len(items))
            if removed > len(items) or removed <= previous:
                continue
            variant = remove_spans(text, [span for item in items[:removed] for span in item])
            if not variant:
                break
            variants.append((variant, k))
            previous = removed
        return variants


class DegreeRows:
    """The degree rows of a batch: the plain query x followed by each variant of the
    configured responses (re-tokenised, all variants alike, EOS kept if the response
    finished), with the variant's degree label."""

    def __init__(self, variants: DegreeVariants, responses: str, tokenizer):
        self.variants, self.keys, self.tokenizer = variants, RESPONSES[responses], tokenizer

    def __call__(self, examples) -> tuple[list[tuple[list[int], list[int]]], list[int]]:
        pairs, labels = [], []
        for example in examples:
            for key in self.keys:
                response = example.responses[key]
                eos = [self.tokenizer.eos_token_id] if response.finished else []
                for text, label in self.variants(response.text):
                    ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + eos
                    pairs.append((list(example.prompt.ids["x"]), ids))
                    labels.append(label)
        return pairs, labels
