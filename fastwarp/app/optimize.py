"""What the affine registration and the refinement share: :class:`Adam` on one tensor, and
:class:`Steps`, a tqdm bar of the optimization steps (when asked for) and the early stop of a
level."""

from __future__ import annotations

import math

import torch

__all__ = ["Adam", "Steps"]


class Adam:
    """Adam (Kingma & Ba, torch's defaults) on one parameter tensor, written out: ``torch.optim``'s
    first step imports ``torch._dynamo`` (about a second, more than a whole registration)."""

    def __init__(self, params: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps, self.t = params, lr, betas, eps, 0
        self.m = torch.zeros_like(params)
        self.v = torch.zeros_like(params)

    @torch.no_grad()
    def step(self):
        (b1, b2), g = self.betas, self.params.grad
        self.t += 1
        self.m.mul_(b1).add_(g, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (self.v / (1 - b2 ** self.t)).sqrt_().add_(self.eps)
        self.params.addcdiv_(self.m, denom, value=-self.lr / (1 - b1 ** self.t))


class Steps:
    """Counts the steps of a coarse-to-fine optimization of ``total`` steps.

    Per level: :meth:`level` resets the stop rule; :meth:`step` records the loss after a step and
    says whether the level has converged: its loss has not improved on the level's best by
    ``tol`` (relative) over ``patience`` steps."""

    def __init__(self, total: int, desc: str, tol: float, patience: int, progress: bool = False):
        self.tol, self.patience = tol, patience
        self.bar = None
        if progress:
            from tqdm import tqdm

            # disable=None: no bar when stderr is not a terminal (a piped log gets none)
            self.bar = tqdm(total=total, desc=desc, unit="step", leave=False, disable=None)
        self.level(None)

    def level(self, factor) -> None:
        self.factor, self.best, self.since, self.taken = factor, math.inf, 0, 0

    def step(self, loss: float) -> bool:
        self.taken += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(level=self.factor, loss=f"{loss:.4f}", refresh=False)
        if loss < self.best - self.tol * abs(self.best if math.isfinite(self.best) else loss):
            self.best, self.since = loss, 0
            return False
        self.since += 1
        return self.since >= self.patience

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
