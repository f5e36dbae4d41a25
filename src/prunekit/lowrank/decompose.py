"""Low-rank factorizations of one layer into standard modules (TRP's schemes, METHODS.md section 5.1).

Every factorization is an ``nn.Sequential`` of ordinary ``Conv2d``/``Linear`` layers, so Torch-Pruning,
ONNX, TorchScript and FlopCounterMode see nothing new. At full rank each reproduces the layer exactly
(up to rounding); at rank r it is the best rank-r approximation of the scheme's reshaped weight.

* ``channel`` (Zhang et al., TRP ``NC``): W as n x (c kh kw) = U S V^T -> kh x kw conv c->r, then 1x1 r->n.
* ``spatial`` (Jaderberg et al., TRP ``VH``): W as (c kh) x (n kw) -> kh x 1 conv c->r, then 1 x kw r->n.
* ``decoupled`` (network decoupling, TRP ``ND``): each filter W_i as c x (kh kw) = sum_j s_ij u_ij v_ij^T;
  path j is a 1x1 conv c->n (u_ij) followed by a k x k depthwise conv (s_ij v_ij); the r paths are summed.
  Here the paths are one 1x1 conv c->n r and one grouped k x k conv n r->n (groups n): the same weights,
  the same MACs and parameters as r separate paths, and two standard layers.
* ``svd`` (linear layers): W = U S V^T -> Linear in->r (no bias), Linear r->out.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .errors import LowRankError, UndecomposableLayerError

CONV_SCHEMES = ("channel", "spatial", "decoupled")
SCHEMES = CONV_SCHEMES + ("svd",)
ALIASES = {"nc": "channel", "vh": "spatial", "nd": "decoupled"}


def scheme_name(scheme: str) -> str:
    s = ALIASES.get(str(scheme).lower(), str(scheme).lower())
    if s not in CONV_SCHEMES:
        raise LowRankError(f"unknown low-rank scheme {scheme!r}; choose one of {', '.join(CONV_SCHEMES)} "
                           "(or TRP's names NC, VH, ND); linear layers always use plain SVD")
    return s


def layer_scheme(module: nn.Module, scheme: str) -> str:
    """The scheme a layer gets: the conv scheme for convs, plain SVD for linear layers."""
    return "svd" if isinstance(module, nn.Linear) else scheme


def why_not(module: nn.Module, scheme: str) -> str | None:
    """Why ``module`` cannot be factorized with ``scheme`` (None if it can)."""
    if isinstance(module, nn.Linear):
        return None
    if type(module) is not nn.Conv2d:
        return f"it is a {type(module).__name__}, not a Conv2d or Linear layer"
    if module.groups != 1:
        return f"it is a grouped conv (groups={module.groups})"
    if module.padding_mode != "zeros":
        return f"its padding mode is {module.padding_mode!r} (only zero padding factorizes exactly)"
    if isinstance(module.padding, str) and module.padding != "valid":
        return f"its padding is {module.padding!r}; give explicit padding"
    return None


def check(module: nn.Module, name: str, scheme: str) -> None:
    reason = why_not(module, scheme)
    if reason:
        raise UndecomposableLayerError(f"layer {name!r} cannot be decomposed: {reason}")


def _pad(module: nn.Conv2d) -> tuple[int, int]:
    return (0, 0) if isinstance(module.padding, str) else tuple(module.padding)


def max_rank(module: nn.Module, scheme: str) -> int:
    """The rank at which the factorization is exact."""
    if isinstance(module, nn.Linear):
        return min(module.in_features, module.out_features)
    n, c, kh, kw = module.weight.shape
    return {"channel": min(n, c * kh * kw), "spatial": min(c * kh, n * kw), "decoupled": min(c, kh * kw)}[scheme]


@dataclass
class Spectrum:
    """The SVD of a layer's weight in its scheme's layout. ``s`` are the singular values ranked by
    importance: (m,) for one matrix; for ``decoupled`` (n, m), one row per filter."""

    u: torch.Tensor
    s: torch.Tensor
    vh: torch.Tensor
    scheme: str

    def energy(self) -> torch.Tensor:
        """The share of the squared Frobenius norm each rank index carries, summed over filters."""
        e = self.s.double() ** 2
        e = e.sum(0) if e.ndim == 2 else e
        return e / e.sum().clamp_min(torch.finfo(torch.float64).tiny)


def matrix(weight: torch.Tensor, scheme: str) -> torch.Tensor:
    """The weight reshaped as the scheme factorizes it (batched per filter for ``decoupled``)."""
    if scheme == "svd":
        return weight
    n, c, kh, kw = weight.shape
    if scheme == "channel":
        return weight.reshape(n, c * kh * kw)
    if scheme == "spatial":
        return weight.permute(1, 2, 0, 3).reshape(c * kh, n * kw)
    return weight.reshape(n, c, kh * kw)


def spectrum(module: nn.Module, scheme: str) -> Spectrum:
    w = module.weight.detach().double()  # float64: the factors are cast back when copied into layers
    u, s, vh = torch.linalg.svd(matrix(w, scheme), full_matrices=False)
    return Spectrum(u, s, vh, scheme)


def reconstruct(weight: torch.Tensor, scheme: str, rank: int, spec: Spectrum | None = None) -> torch.Tensor:
    """The rank-``rank`` truncation of ``weight`` in the scheme's layout, reshaped back (TRP's T_r(W))."""
    if spec is None:
        u, s, vh = torch.linalg.svd(matrix(weight, scheme), full_matrices=False)
    else:
        u, s, vh = spec.u, spec.s, spec.vh
    m = (u[..., :rank] * s[..., None, :rank]) @ vh[..., :rank, :]
    return unmatrix(m, weight.shape, scheme)


def unmatrix(m: torch.Tensor, shape, scheme: str) -> torch.Tensor:
    if scheme in ("svd", "channel", "decoupled"):
        return m.reshape(shape)
    n, c, kh, kw = shape
    return m.reshape(c, kh, n, kw).permute(2, 0, 1, 3)


def factorize(module: nn.Module, scheme: str, rank: int, spec: Spectrum | None = None) -> nn.Sequential:
    """``module`` as an ``nn.Sequential`` of two standard layers at ``rank`` (weights on the same
    device/dtype, the singular values split evenly as sqrt(S) between the two factors)."""
    if not 1 <= rank <= max_rank(module, scheme):
        raise LowRankError(f"rank {rank} is outside [1, {max_rank(module, scheme)}] for this layer")
    spec = spec or spectrum(module, scheme)
    root = spec.s[..., :rank].clamp_min(0).sqrt()
    a = spec.u[..., :rank] * root[..., None, :]       # left factor, columns scaled
    b = root[..., :, None] * spec.vh[..., :rank, :]   # right factor, rows scaled
    first, second = skeleton(module, scheme, rank)
    bias = module.bias.detach() if module.bias is not None else None
    with torch.no_grad():
        if scheme == "svd":
            first.weight.copy_(b)
            second.weight.copy_(a)
        elif scheme == "channel":
            first.weight.copy_(b.reshape(first.weight.shape))
            second.weight.copy_(a.reshape(second.weight.shape))
        elif scheme == "spatial":
            n, c, kh, kw = module.weight.shape
            first.weight.copy_(a.T.reshape(rank, c, kh, 1))
            second.weight.copy_(b.reshape(rank, n, kw).permute(1, 0, 2).reshape(n, rank, 1, kw))
        else:  # decoupled: a (n, c, r), b (n, r, kh kw); pointwise channel i*r + j is path j of filter i
            n, c, kh, kw = module.weight.shape
            first.weight.copy_(a.permute(0, 2, 1).reshape(n * rank, c, 1, 1))
            second.weight.copy_(b.reshape(n, rank, kh, kw))
        if bias is not None:
            second.bias.copy_(bias)
    return nn.Sequential(first, second)


def skeleton(module: nn.Module, scheme: str, rank: int) -> tuple[nn.Module, nn.Module]:
    """The two layers of the factorization (uninitialized weights): what a saved run is rebuilt into."""
    kw_ = {"device": module.weight.device, "dtype": module.weight.dtype}
    bias = module.bias is not None
    if scheme == "svd":
        return (nn.Linear(module.in_features, rank, bias=False, **kw_),
                nn.Linear(rank, module.out_features, bias=bias, **kw_))
    n, c, kh, kw = module.weight.shape
    (sh, sw), (ph, pw), (dh, dw) = module.stride, _pad(module), module.dilation
    if scheme == "channel":
        return (nn.Conv2d(c, rank, (kh, kw), module.stride, _pad(module), module.dilation, bias=False, **kw_),
                nn.Conv2d(rank, n, 1, bias=bias, **kw_))
    if scheme == "spatial":
        return (nn.Conv2d(c, rank, (kh, 1), (sh, 1), (ph, 0), (dh, 1), bias=False, **kw_),
                nn.Conv2d(rank, n, (1, kw), (1, sw), (0, pw), (1, dw), bias=bias, **kw_))
    return (nn.Conv2d(c, n * rank, 1, bias=False, **kw_),
            nn.Conv2d(n * rank, n, (kh, kw), module.stride, _pad(module), module.dilation, groups=n, bias=bias, **kw_))


def replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)
