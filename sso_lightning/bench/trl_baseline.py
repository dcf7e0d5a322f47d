"""TRL's ``DPOTrainer`` on the PBAA row's pairs: x|y+ against x|y-, the same token ids, batches and
order as our side. Everything is TRL's default (loss, beta, optimizer, schedule, its bf16 autocast
and gradient checkpointing) except what makes the runs comparable: no truncation
(``max_length=None``), the batch size, the number of steps, sequential batches, no saving and no
reporting. Its reference pass with ``precompute_ref_log_probs=True`` runs before training and is
not part of a step, as our reference log-probs come with the data."""

from __future__ import annotations

import tempfile

from sso_lightning.bench.timing import StepClock, TrainerClock
from sso_lightning.bench.workload import Workload


class Unavailable(Exception):
    """Why a baseline could not run (a missing optional package)."""


def dpo_step_seconds(work: Workload, bf16: bool, precompute: bool) -> list[float]:
    """Seconds of each optimizer step of TRL's DPOTrainer over every batch, warm-up ones first, on
    the model in ``model.dtype``. ``bf16=False`` also turns its gradient checkpointing off."""
    try:
        from datasets import Dataset
        from transformers.trainer_callback import PrinterCallback
        from trl import DPOConfig, DPOTrainer
    except ImportError as e:
        raise Unavailable(f"TRL is not installed (no module {e.name}; pip install -e '.[dev]')") from None

    class PretokenizedDPOTrainer(DPOTrainer):
        """Trains on the given token ids: TRL 1.16 would tokenize text itself, so its dataset
        preparation (text to ``prompt_ids``/``chosen_ids``/``rejected_ids``) is skipped."""

        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset

    examples = [ex for batch in work.batches() for ex in batch]
    data = Dataset.from_dict(
        {
            "prompt_ids": [list(ex.prompt.ids["x"]) for ex in examples],
            "chosen_ids": [list(ex.responses["y+"].ids) for ex in examples],
            "rejected_ids": [list(ex.responses["y-"].ids) for ex in examples],
        }
    )
    float32 = {} if bf16 else {"bf16": False, "gradient_checkpointing": False}
    clock = StepClock(work.device)
    with tempfile.TemporaryDirectory() as output_dir:
        args = DPOConfig(
            output_dir=output_dir,
            max_steps=work.settings.batches,
            per_device_train_batch_size=work.settings.batch_size,
            max_length=None,
            precompute_ref_log_probs=precompute,
            train_sampling_strategy="sequential",
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            use_cpu=work.device.type == "cpu",
            seed=work.settings.seed,
            **float32,
        )
        model = work.plain_model()
        trainer = PretokenizedDPOTrainer(
            model=model, args=args, train_dataset=data, processing_class=work.tokenizer, callbacks=[TrainerClock(clock)]
        )
        trainer.remove_callback(PrinterCallback)  # it prints the training logs on stdout
        trainer.train()
    return clock.seconds
