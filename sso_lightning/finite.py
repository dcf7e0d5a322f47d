"""Stopping a run at the first non-finite loss or gradient, before the step's update.

With a learning rate far too high, or a degenerate batch, the loss turns NaN; from then on every
step is NaN, the weights become NaN, and the failure would show only at the next generation
("probability tensor contains inf/nan"), or not at all in an exported policy. ``FiniteSteps``
checks, before every optimizer step, the loss terms the step logged and every gradient; both are
the same on every rank under DDP (the terms are logged with ``sync_dist``, the gradients
all-reduced), so all ranks stop together. ``require_finite`` keeps a non-finite policy from
being exported.
"""

from __future__ import annotations

import lightning as L
import torch

from sso_lightning.checkpoints import Checkpoints
from sso_lightning.errors import RunStopped

LOGGED_PREFIXES = ("train/", "generator/")


def nonfinite(metrics: dict, module) -> tuple[dict[str, float], list[str], int]:
    """The step's logged loss terms that are NaN or infinite, the names of the gradients that hold
    such a value, and the number of gradients; one read from the device for all of them."""
    terms = {name: torch.as_tensor(v) for name, v in metrics.items() if name.startswith(LOGGED_PREFIXES)}
    grads = {name: p.grad for name, p in module.named_parameters() if p.grad is not None}
    device = next(iter(grads.values())).device if grads else "cpu"
    checks = [torch.isfinite(t).all().to(device) for t in (*terms.values(), *grads.values())]
    finite = torch.stack(checks).tolist() if checks else []
    bad = [name for name, ok in zip((*terms, *grads), finite) if not ok]
    return {n: float(terms[n]) for n in bad if n in terms}, [n for n in bad if n in grads], len(grads)


class FiniteSteps(L.Callback):
    def __init__(self, checkpoints: Checkpoints | None = None):
        """``checkpoints``: where the last good checkpoint is (named in the closing line)."""
        self.checkpoints = checkpoints

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        terms, gradients, total = nonfinite(trainer.callback_metrics, pl_module)
        if not terms and not gradients:
            return
        found = [f"non-finite loss terms {', '.join(f'{n}={v}' for n, v in terms.items())}"] if terms else []
        if gradients:
            found.append(f"non-finite gradients in {len(gradients)} of {total} tensors (first: {gradients[0]})")
        latest = self.checkpoints.latest() if self.checkpoints else None
        last_good = f"; the last good checkpoint is {latest}" if latest else "; there is no checkpoint yet"
        raise RunStopped(
            f"optimizer step {trainer.global_step + 1} (iteration {pl_module.iteration}): {'; '.join(found)}; "
            f"the run stopped before this update and exported nothing{last_good} "
            "(lower optimizer.lr, or check the data)"
        )


def require_finite(model, what: str) -> None:
    """Refuse to save weights that hold NaN or infinity."""
    tensors = [(n, t) for n, t in model.state_dict().items() if t.is_floating_point()]
    bad = [n for n, t in tensors if not torch.isfinite(t).all()]
    if bad:
        raise RunStopped(f"{what} has non-finite weights in {len(bad)} of {len(tensors)} tensors ({bad[0]}, ...)")
