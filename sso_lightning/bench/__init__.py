"""``python -m sso_lightning.bench``: our framework's speed and memory beside TRL, a bare PyTorch loop
and plain Hugging Face ``generate``, on one model, one data set, one batch size and one precision
(docs/performance.md)."""
