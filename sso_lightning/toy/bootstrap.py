"""The toy policy: a tiny Llama taught by supervised fine-tuning on the scripted teacher.

The bootstrap only decides where the weights come from: the SFT checkpoint is saved with
``save_pretrained`` into a cache directory keyed by every setting that shapes it, and loaded
back by ``PretrainedPolicy``, with every model option (dtype, attention, LoRA, gradient
checkpointing, compile), like any real model. Later runs with the same settings reuse it.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader
from transformers import LlamaConfig, LlamaForCausalLM

from sso_lightning.atomic import publish_dir
from sso_lightning.data.batching import pack_pairs
from sso_lightning.data.principles import PrincipleLibrary
from sso_lightning.data.steering import render_prompt
from sso_lightning.errors import ConfigError
from sso_lightning.losses import sequence_logps
from sso_lightning.models import PretrainedPolicy
from sso_lightning.terminal import StderrProgressBar, quiet_lightning
from sso_lightning.toy.task import DIGITS, FILLER_WORDS, QUERY_WORD, ToyPrompts
from sso_lightning.toy.teacher import Teacher
from sso_lightning.toy.tokenizer import build_toy_tokenizer

FORMAT_VERSION = 1  # bump when the bootstrap's code changes what it produces


@dataclass
class SFTSettings:
    num_examples: int = 6000
    epochs: int = 3
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0


@dataclass
class ToyPolicy(PretrainedPolicy):
    """The SFT-bootstrapped toy policy, built once per settings; ``name_or_path`` (if set) loads
    other weights instead, e.g. an earlier run's ``policy/``."""

    principles: PrincipleLibrary | None = None
    teacher: Teacher = field(default_factory=Teacher)
    sft: SFTSettings = field(default_factory=SFTSettings)
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 3
    num_heads: int = 4
    cache_dir: str = "~/.cache/sso_lightning"

    def __post_init__(self):
        if not isinstance(self.principles, PrincipleLibrary):
            raise ConfigError(
                "model=toy needs a principle library (principles=toy): its word-level vocabulary is built from "
                "the library's texts; model-written principles need a real model (model=hf ...)"
            )

    def weights(self) -> str:
        if self.name_or_path:
            return self.name_or_path
        path = self.checkpoint_dir()
        if not (path / "config.json").exists():
            self.build(path)
        return str(path)

    def checkpoint_dir(self) -> Path:
        return Path(self.cache_dir).expanduser() / "toy" / self.fingerprint()

    def fingerprint(self) -> str:
        settings = {
            "version": FORMAT_VERSION,
            "principles": {"features": dict(self.principles.features), "concision": self.principles.concision},
            "principle_choice": [
                list(self.principles.features_per_prompt),
                self.principles.concision_probability,
                self.principles.seed,
            ],
            "teacher": asdict(self.teacher),
            "sft": asdict(self.sft),
            "model": [self.hidden_size, self.intermediate_size, self.num_layers, self.num_heads],
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def vocabulary(self) -> list[str]:
        pairs = [
            *self.principles.features.values(),
            *([self.principles.concision] if self.principles.concision else []),
        ]
        return [QUERY_WORD, *DIGITS, *FILLER_WORDS, *(p[side] for p in pairs for side in ("good", "bad"))]

    def build(self, path: Path) -> None:
        """Train the bootstrap and publish it atomically (a half-built checkpoint is never visible)."""
        tokenizer = build_toy_tokenizer(self.vocabulary())
        with torch.random.fork_rng():
            torch.manual_seed(self.sft.seed)
            model = LlamaForCausalLM(self.model_config(tokenizer))
            with quiet_lightning():
                L.Trainer(
                    max_epochs=self.sft.epochs,
                    accelerator="cpu",
                    logger=False,
                    enable_checkpointing=False,
                    enable_model_summary=False,
                    callbacks=[StderrProgressBar()],  # the bars of the run that follows, not Rich's
                    gradient_clip_val=1.0,
                ).fit(
                    SFTModule(model, self.sft.lr),
                    DataLoader(
                        self.sft_pairs(tokenizer),
                        batch_size=self.sft.batch_size,
                        shuffle=True,
                        collate_fn=lambda pairs: pack_pairs(pairs, tokenizer.pad_token_id),
                    ),
                )

        def save(directory):
            model.save_pretrained(directory)
            tokenizer.save_pretrained(directory)

        try:
            publish_dir(path, save)
        except FileExistsError:  # another process published the same bootstrap first
            pass

    def model_config(self, tokenizer) -> LlamaConfig:
        return LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_heads,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=None,
        )

    def sft_pairs(self, tokenizer) -> list[tuple[list[int], list[int]]]:
        """Teacher demonstrations: a third each with no principle, the good and the bad one."""
        rng = random.Random(self.sft.seed)
        queries = ToyPrompts(num_train=self.sft.num_examples, num_eval=0, seed=10_000 + self.sft.seed).load().train
        pairs = []
        for query in queries:
            principles = self.principles.for_query(query)
            side = rng.choice(("plain", "good", "bad"))
            system = {"plain": None, "good": principles.good, "bad": principles.bad}[side]
            good = principles.features if side == "good" else ()
            bad = principles.features if side == "bad" else ()
            answer = self.teacher.answer(query, good, bad, rng)
            ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            pairs.append((render_prompt(tokenizer, query, system), ids))
        return pairs


class SFTModule(L.LightningModule):
    """Mean token negative log-likelihood of the responses."""

    def __init__(self, model, lr: float):
        super().__init__()
        self.model, self.lr = model, lr

    def training_step(self, batch, batch_idx):
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        sums, lengths = sequence_logps(logits, batch["input_ids"], batch["response_mask"])
        loss = -sums.sum() / lengths.sum()
        self.log("sft/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=0.0)
