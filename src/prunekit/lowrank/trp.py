"""TRP training (Xu et al., IJCAI 2020; METHODS.md section 5.2): every ``period`` steps the target
layers are replaced by their energy-``energy`` truncation before the forward pass, and after the
backward pass ``nuclear * U_r V_r^T`` (the subgradient of the nuclear norm, truncated as the official
code does) is added to their gradients; other steps are plain SGD. Runs inside ``prunekit.train.fit``
as a step hook, so seeding, checkpoints, resume and Accelerate/DDP are the loop's own (every
process computes the same SVD of the same weights, after the gradients are all-reduced)."""
from __future__ import annotations

import time

import torch
import torch.nn as nn

from .decompose import layer_scheme, matrix, unmatrix
from .errors import LowRankError
from .ranks import check_energy, rank_for_energy


class TRPHook:
    def __init__(self, layers: dict[str, nn.Module], scheme: str, energy: float = 0.9, nuclear: float = 3e-4,
                 period: int = 1):
        check_energy(energy)
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise LowRankError(f"period must be a whole number >= 1 (TRP steps every period iterations), got {period!r}")
        if isinstance(nuclear, bool) or not isinstance(nuclear, (int, float)) or not nuclear >= 0:
            raise LowRankError(f"nuclear must be >= 0 (the nuclear-norm weight lambda), got {nuclear!r}")
        self.layers, self.scheme, self.energy, self.nuclear, self.period = layers, scheme, energy, float(nuclear), period
        self.pending: dict[str, torch.Tensor] = {}
        self.ranks: dict[str, int] = {}
        self.steps = self.trp_steps = 0
        self.seconds = 0.0

    def before_forward(self, step: int) -> None:
        """W <- T_r(W) for every target layer, keeping U_r V_r^T for the gradient."""
        self.pending = {}
        self.steps += 1
        if step % self.period:
            return
        t0 = time.perf_counter()
        self.trp_steps += 1
        with torch.no_grad():
            for name, m in self.layers.items():
                w, scheme = m.weight, layer_scheme(m, self.scheme)
                u, s, vh = torch.linalg.svd(matrix(w.float(), scheme), full_matrices=False)
                r = rank_for_energy(s, self.energy)
                w.copy_(unmatrix((u[..., :r] * s[..., None, :r]) @ vh[..., :r, :], w.shape, scheme).to(w.dtype))
                if self.nuclear:
                    self.pending[name] = unmatrix(u[..., :r] @ vh[..., :r, :], w.shape, scheme).to(w.dtype)
                self.ranks[name] = r
        self.seconds += time.perf_counter() - t0

    def before_step(self, step: int) -> None:
        """grad += lambda U_r V_r^T on the TRP steps (the official code adds it only there)."""
        for name, sub in self.pending.items():
            g = self.layers[name].weight.grad
            if g is not None:
                g.add_(sub, alpha=self.nuclear)
        self.pending = {}

