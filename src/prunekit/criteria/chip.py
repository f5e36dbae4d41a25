"""CHIP (Sui et al. 2021): channel independence, the nuclear norm a channel's removal costs.

CI_i = ||A||_* - ||A without row i||_* for the C x HW feature matrix A of one image, averaged over
images. It is computed from the Gram matrix G = A A^T: the nuclear norm is the sum of the square
roots of G's eigenvalues, and deleting row i of A deletes row and column i of G, so all C
row-deleted norms are one batched eigvalsh instead of C + 1 SVDs of C x HW matrices.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from ..errors import ConfigError
from ..graph import UnitGraph
from ..signals import Signals, unit_features
from . import register_criterion

CHUNK_BYTES = 256 * 2**20  # memory for one batch of row-deleted Gram matrices


def eigvalsh(G: torch.Tensor) -> torch.Tensor:
    """Batched eigvalsh. On a CPU the batch is split over torch's threads: ATen loops over a batch
    of small matrices one LAPACK call at a time, on one core (the GIL is released inside)."""
    threads = torch.get_num_threads() if G.device.type == "cpu" else 1
    batch = G.reshape(-1, *G.shape[-2:])
    if threads < 2 or len(batch) < 2 * threads:
        return torch.linalg.eigvalsh(G)
    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(torch.linalg.eigvalsh, torch.tensor_split(batch, threads)))
    return torch.cat(parts).view(G.shape[:-1])


def nuclear_from_gram(G: torch.Tensor) -> torch.Tensor:
    """Sum of singular values from the Gram matrix's eigenvalues.

    Eigenvalues below the numerical-rank cutoff (size x eps x largest, as in matrix_rank) are
    rounding noise of exact zeros; their square roots would add ~1e-8 of error, so they count 0.
    """
    lam = eigvalsh(G)
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
    out = torch.empty(A.shape[:2], dtype=A.dtype, device=A.device)
    for i in range(A.shape[1]):
        Ai = A.clone()
        Ai[:, i] = 0
        out[:, i] = full - torch.linalg.svdvals(Ai).sum(-1)
    return out


def as_flag(value, name: str) -> bool:
    """An on/off option from the API (True, 1) or the CLI (``--option faithful=1``, ``=true``)."""
    text = str(value).strip().lower()
    if isinstance(value, bool) or text in ("0", "1", "true", "false", "yes", "no", "on", "off"):
        return text in ("1", "true", "yes", "on")
    raise ConfigError(f"option {name}={value!r} is not on/off; write {name}=1 or {name}=0")


@register_criterion("chip")
def chip(graph: UnitGraph, signals: Signals, seed: int = 0,
         faithful: bool | int | str = False) -> dict[str, torch.Tensor]:
    """Mean CI over the calibration images, read where the Unit's consumers read it.

    A residual stream is read after every block that writes it, and must keep one channel set for
    all of them. By default its ranking sums CI over all those reading points, so every block's
    output has a say. The official code instead ranks each block's conv2 by its own output (and
    adds the identity by position, mixing channel identities); ``faithful`` reproduces the one of
    those per-layer rankings that fixes the stream where it starts: the CI of the first tensor the
    stream's consumers read, i.e. the stem's output for stage 1 and the first block's output
    (after the add and ReLU) for later stages, as the official ResNet-50 code ranks a stage's
    downsample conv and first conv3 together by that block's output. Units with one producer (a
    block's inner conv, every VGG conv) have one reading point, so both modes agree there.
    """
    faithful = as_flag(faithful, "faithful")
    signals.require("chip")
    signals.record["chip_stream_ranking"] = "first block output (faithful)" if faithful else "sum over block outputs"
    totals = [torch.zeros(u.width, dtype=torch.float64) for u in graph.units]
    counts = [0] * len(graph.units)
    points: dict[int, int] = {}  # reading points of each Unit seen in this batch, in execution order

    def consume(k: int, feats: torch.Tensor) -> None:
        points[k] = points.get(k, 0) + 1
        if faithful and points[k] > 1:
            return
        totals[k] += channel_independence(feats).sum(0).cpu()
        counts[k] += feats.shape[0]

    def images():
        for x, _ in signals.batches("CHIP channel independence"):
            points.clear()  # runs when the previous batch's forward pass is done
            yield x

    unit_features(graph, images(), consume, all_points=True)
    return {u.name: t / max(1, n) for u, t, n in zip(graph.units, totals, counts)}
