"""CHIP (Sui et al. 2021): channel independence, the nuclear norm a channel's removal costs.

CI_i = ||A||_* - ||A without row i||_* for the C x HW feature matrix A of one image, averaged over
images. It is computed from the Gram matrix G = A A^T: the nuclear norm is the sum of the square
roots of G's eigenvalues, and deleting row i of A deletes row and column i of G, so all C
row-deleted norms are one batched eigvalsh instead of C + 1 SVDs of C x HW matrices.
"""
from __future__ import annotations

import torch

from ..graph import UnitGraph
from ..signals import Signals, unit_features
from . import register_criterion

CHUNK_BYTES = 256 * 2**20  # memory for one batch of row-deleted Gram matrices


def nuclear_from_gram(G: torch.Tensor) -> torch.Tensor:
    """Sum of singular values from the Gram matrix's eigenvalues.

    Eigenvalues below the numerical-rank cutoff (size x eps x largest, as in matrix_rank) are
    rounding noise of exact zeros; their square roots would add ~1e-8 of error, so they count 0.
    """
    lam = torch.linalg.eigvalsh(G)
    cutoff = lam[..., -1:].clamp_min(0) * G.shape[-1] * torch.finfo(G.dtype).eps
    return torch.where(lam > cutoff, lam, torch.zeros_like(lam)).sqrt().sum(-1)


def channel_independence(A: torch.Tensor) -> torch.Tensor:
    """CI of every row of every matrix in A (N x C x P), float64; returns N x C.

    Uses whichever Gram matrix is smaller: with C <= P, the C row-and-column-deleted minors of
    A A^T; with P < C, the rank-one downdates A^T A - a_i a_i^T (P x P), since deleting row a_i
    of A removes exactly that term from A^T A.
    """
    A = A.double()
    n, c, p = A.shape
    if c == 1:
        return torch.linalg.matrix_norm(A, ord="nuc")[:, None]
    if c <= p:
        G = A @ A.transpose(1, 2)
        others = torch.arange(c, device=A.device).repeat(c, 1)
        others = others[~torch.eye(c, dtype=torch.bool, device=A.device)].view(c, c - 1)  # row i: all but i
        deleted = lambda rows: G[:, others[rows][:, :, None], others[rows][:, None, :]]  # noqa: E731
        size = c - 1
    else:
        G = A.transpose(1, 2) @ A
        deleted = lambda rows: G[:, None] - A[:, rows, :, None] * A[:, rows, None, :]  # noqa: E731
        size = p
    full = nuclear_from_gram(G)
    chunk = max(1, CHUNK_BYTES // (8 * n * size * size))
    parts = [nuclear_from_gram(deleted(torch.arange(s, min(c, s + chunk), device=A.device)))
             for s in range(0, c, chunk)]
    return full[:, None] - torch.cat(parts, dim=1)


def channel_independence_svd(A: torch.Tensor) -> torch.Tensor:
    """The definition, one SVD per deleted row: the reference the fast form is tested against."""
    A = A.double()
    full = torch.linalg.svdvals(A).sum(-1)
    out = torch.empty(A.shape[:2], dtype=A.dtype)
    for i in range(A.shape[1]):
        Ai = A.clone()
        Ai[:, i] = 0
        out[:, i] = full - torch.linalg.svdvals(Ai).sum(-1)
    return out


@register_criterion("chip")
def chip(graph: UnitGraph, signals: Signals, seed: int = 0) -> dict[str, torch.Tensor]:
    """Mean CI over the calibration images. A residual stream is read after every block that
    writes it; its one ranking sums CI over all those reading points (the paper ranks each conv
    on its own, which a physically shared stream cannot do)."""
    signals.require("chip")
    totals = [torch.zeros(u.width, dtype=torch.float64) for u in graph.units]
    counts = [0] * len(graph.units)

    def consume(k: int, feats: torch.Tensor) -> None:
        totals[k] += channel_independence(feats).sum(0).cpu()
        counts[k] += feats.shape[0]

    unit_features(graph, (x for x, _ in signals.batches("CHIP channel independence")), consume, all_points=True)
    return {u.name: t / max(1, n) for u, t, n in zip(graph.units, totals, counts)}
