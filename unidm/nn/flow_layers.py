"""Invertible layers of normalizing flows: each maps ``x -> (z, log|det dz/dx|)`` and back.

Every layer is a :class:`FlowLayer`: ``forward(x [B, *shape]) -> (z [B, *out_shape], logdet [B])`` and
``inverse(z) -> x``, with ``out_shape(shape)`` its output shape (only :class:`Squeeze` and :class:`FactorOut` change
it). Vectors are ``[B, D]`` and images ``[B, C, H, W]``; "channels" are dimension 1 in both (a vector's features
are its channels, with one spatial position).

=======================  =========================================================================================
layer                    paper
=======================  =========================================================================================
:class:`Coupling`        additive coupling (Dinh et al. 2014, NICE, eq. 4), affine coupling (Dinh et al. 2017,
                         RealNVP, eq. 6-9; Kingma & Dhariwal 2018, Glow, Table 1)
:class:`DiagonalScaling` NICE's rescaling layer (Dinh et al. 2014, Sec. 3.3)
:class:`ActNorm`         Glow's activation normalization with data-dependent init (Kingma & Dhariwal 2018, Sec. 3.1)
:class:`InvertibleLinearLU`  Glow's invertible 1x1 convolution in LU form (Kingma & Dhariwal 2018, Sec. 3.2, eq. 10)
:class:`Squeeze`         RealNVP's squeezing, ``[C, H, W] -> [4C, H/2, W/2]`` (Dinh et al. 2017, Sec. 3.6)
:class:`FactorOut`       RealNVP's multi-scale factoring out of half the channels (Dinh et al. 2017, Sec. 3.6)
=======================  =========================================================================================

Example:
    >>> import torch
    >>> flow = FlowSequence([ActNorm(2), InvertibleLinearLU(2)], (2,))
    >>> x = torch.randn(5, 2)
    >>> z, logdet = flow(x)
    >>> bool(torch.allclose(flow.inverse(z), x, atol=1e-5)), tuple(logdet.shape)
    (True, (5,))
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["FlowLayer", "FlowSequence", "Coupling", "DiagonalScaling", "ActNorm", "InvertibleLinearLU", "Squeeze",
           "FactorOut", "COUPLING_SCALES", "checkerboard_mask", "channel_mask", "feature_mask"]

Shape = tuple[int, ...]


def _spatial(x: Tensor) -> int:
    """Positions per channel: ``H * W`` for images, 1 for vectors."""
    return math.prod(x.shape[2:])


def _per_channel(v: Tensor, x: Tensor) -> Tensor:
    """``v [C]`` shaped to broadcast over ``x [B, C, ...]``."""
    return v.reshape(1, -1, *([1] * (x.ndim - 2)))


class FlowLayer(nn.Module):
    """An invertible map with a tractable Jacobian: ``forward(x) -> (z, log|det dz/dx| [B])``, ``inverse(z) -> x``."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def out_shape(self, shape: Shape) -> Shape:
        """The per-example output shape for per-example input ``shape``."""
        return tuple(shape)


class FlowSequence(FlowLayer):
    """Layers applied in order; log-determinants add (the chain rule).

    Args:
        layers: the :class:`FlowLayer` s, first applied first.
        in_shape: the per-example input shape (``out_shape`` of each layer gives the next one's).
    """

    def __init__(self, layers: Sequence[FlowLayer], in_shape: Sequence[int]):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.in_shape: Shape = tuple(int(s) for s in in_shape)
        shape = self.in_shape
        for layer in self.layers:
            shape = layer.out_shape(shape)
        self.final_shape: Shape = shape

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: Tensor) -> Tensor:
        for layer in reversed(self.layers):
            z = layer.inverse(z)
        return z

    def out_shape(self, shape: Shape) -> Shape:
        if tuple(shape) != self.in_shape:
            raise ValueError(f"this flow takes per-example shape {self.in_shape}, got {tuple(shape)}")
        return self.final_shape


# ---- masks --------------------------------------------------------------------------------------------------------
def checkerboard_mask(shape: Sequence[int], parity: int = 0) -> Tensor:
    """``[C, H, W]`` mask that is 1 where ``(i + j) % 2 == parity`` (RealNVP's spatial checkerboard, Fig. 3 left).

    >>> checkerboard_mask((1, 2, 2))[0].tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    c, h, w = shape
    ij = torch.arange(h)[:, None] + torch.arange(w)[None, :]
    return ((ij % 2) == parity).float().expand(c, h, w).clone()


def channel_mask(shape: Sequence[int], parity: int = 0) -> Tensor:
    """``[C, H, W]`` mask that is 1 on the first ``C // 2`` channels (``parity = 0``) or on the others (RealNVP's
    channel-wise mask, Fig. 3 right).

    >>> channel_mask((4, 1, 1))[:, 0, 0].tolist()
    [1.0, 1.0, 0.0, 0.0]
    """
    c = shape[0]
    m = (torch.arange(c) < c // 2).float()
    m = m if parity == 0 else 1 - m
    return m.reshape(c, *([1] * (len(shape) - 1))).expand(*shape).clone()


def feature_mask(dim: int, pattern: str = "half", parity: int = 0) -> Tensor:
    """``[D]`` mask over a vector's features: ``"half"`` is 1 on the first ``D // 2``, ``"alternate"`` on the even
    indices; ``parity = 1`` flips it.

    >>> feature_mask(4, "alternate").tolist(), feature_mask(4, "half", 1).tolist()
    ([1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0])
    """
    i = torch.arange(dim)
    m = (i < dim // 2) if pattern == "half" else (i % 2 == 0)
    m = m.float()
    return m if parity == 0 else 1 - m


# ---- couplings ----------------------------------------------------------------------------------------------------
#: how a coupling turns the network's raw output into ``log s``: ``"additive"`` none (NICE), ``"tanh"`` a learned
#: per-channel multiple of ``tanh`` (RealNVP's bounded scale), ``"sigmoid"`` ``log sigmoid(h + 2)`` (Glow)
COUPLING_SCALES = ("additive", "tanh", "sigmoid")


class Coupling(FlowLayer):
    """Coupling layer ``z = m x + (1 - m) (x exp(s(m x)) + t(m x))`` with a binary mask ``m``.

    The masked part passes unchanged and conditions an elementwise affine map of the rest, so the Jacobian is
    triangular and ``log|det| = sum((1 - m) s)`` (Dinh et al. 2017, RealNVP, eq. 6-9). ``scale = "additive"`` is
    NICE's additive coupling ``s = 0`` (Dinh et al. 2014, eq. 4, volume preserving); ``"tanh"`` is
    ``s = a tanh(h)`` with a learned per-channel ``a`` (RealNVP); ``"sigmoid"`` is ``s = log sigmoid(h + 2)``
    (Glow's affine coupling, Kingma & Dhariwal 2018, Table 1).

    Args:
        mask: ``[*shape]`` of 0/1 (:func:`checkerboard_mask`, :func:`channel_mask`, :func:`feature_mask`).
        net: ``net(m x [B, *shape]) -> [B, k C, ...]`` with ``k = 1`` (additive: ``t``) or ``k = 2`` (``h, t``);
            a network whose last layer starts at zero starts the coupling at (nearly) the identity.
        scale: one of :data:`COUPLING_SCALES`.

    Example:
        >>> import torch
        >>> layer = Coupling(feature_mask(2), nn.Linear(2, 4), "tanh")
        >>> x = torch.randn(3, 2)
        >>> z, logdet = layer(x)
        >>> bool(torch.allclose(layer.inverse(z), x, atol=1e-6)), bool(torch.equal(z[:, 0], x[:, 0]))
        (True, True)
    """

    def __init__(self, mask: Tensor, net: nn.Module, scale: str = "tanh"):
        super().__init__()
        if scale not in COUPLING_SCALES:
            raise ValueError(f"unknown coupling scale {scale!r}; valid: {', '.join(COUPLING_SCALES)}")
        self.scale = scale
        self.net = net
        self.register_buffer("mask", mask.float().clone())
        if scale == "tanh":
            self.tanh_scale = nn.Parameter(torch.ones(mask.shape[0]))

    def _shift_log_scale(self, x_masked: Tensor) -> tuple[Tensor, Tensor]:
        out = self.net(x_masked)
        if self.scale == "additive":
            return out, torch.zeros_like(out)
        h, t = out.chunk(2, dim=1)
        if self.scale == "tanh":
            s = _per_channel(self.tanh_scale, h) * torch.tanh(h)
        else:
            s = nn.functional.logsigmoid(h + 2.0)
        return t, s

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        m = self.mask.to(x.dtype)
        t, s = self._shift_log_scale(x * m)
        s, t = s * (1 - m), t * (1 - m)
        z = x * m + (1 - m) * (x * torch.exp(s) + t)
        return z, s.flatten(1).sum(1)

    def inverse(self, z: Tensor) -> Tensor:
        m = self.mask.to(z.dtype)
        t, s = self._shift_log_scale(z * m)
        s, t = s * (1 - m), t * (1 - m)
        return z * m + (1 - m) * (z - t) * torch.exp(-s)


class DiagonalScaling(FlowLayer):
    """NICE's last layer ``z = x exp(s)``, a learned log-scale per dimension (Dinh et al. 2014, Sec. 3.3):
    ``log|det| = sum(s)``.

    >>> import torch
    >>> layer = DiagonalScaling((3,))
    >>> _ = nn.init.constant_(layer.log_scale, math.log(2.0))
    >>> z, logdet = layer(torch.ones(1, 3))
    >>> z.tolist(), round(float(logdet.detach()), 6) == round(3 * math.log(2), 6)
    ([[2.0, 2.0, 2.0]], True)
    """

    def __init__(self, shape: Sequence[int]):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(*shape))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x * torch.exp(self.log_scale), self.log_scale.sum().expand(x.shape[0]).to(x.dtype)

    def inverse(self, z: Tensor) -> Tensor:
        return z * torch.exp(-self.log_scale)


class ActNorm(FlowLayer):
    """Glow's activation normalization ``z = (x + b) exp(log_s)`` per channel (Kingma & Dhariwal 2018, Sec. 3.1):
    ``log|det| = H W sum(log_s)``.

    Data-dependent initialisation: the first forward pass in training mode while ``initialized`` is false sets
    ``b = -mean`` and ``log_s = -log(std)`` per channel over that batch (and its positions), so the output has zero
    mean and unit variance per channel; in a multi-process run the moments are averaged over the ranks, so every
    rank holds the same weights. ``initialized`` is a buffer in the state dict: weights loaded from a run (or a
    resumed checkpoint) are never initialised again.

    Example:
        >>> import torch
        >>> layer = ActNorm(2)
        >>> z, _ = layer(3 + 2 * torch.randn(1000, 2))  # training mode: initialises on this batch
        >>> [abs(round(v, 4)) for v in z.mean(0).tolist()], bool(layer.initialized)
        ([0.0, 0.0], True)
    """

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(num_channels))
        self.log_scale = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set ``b``, ``log_s`` from the batch ``x`` (averaged over the ranks of a process group)."""
        dims = [0, *range(2, x.ndim)]
        moments = torch.stack([x.mean(dims), x.pow(2).mean(dims)]).double()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(moments)
            moments /= torch.distributed.get_world_size()
        mean, sq = moments
        std = (sq - mean**2).clamp_min(0).sqrt()
        self.loc.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + self.eps))
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and not bool(self.initialized):
            self.initialize(x.detach())
        z = (x + _per_channel(self.loc, x)) * torch.exp(_per_channel(self.log_scale, x))
        return z, (_spatial(x) * self.log_scale.sum()).expand(x.shape[0]).to(x.dtype)

    def inverse(self, z: Tensor) -> Tensor:
        return z * torch.exp(-_per_channel(self.log_scale, z)) - _per_channel(self.loc, z)


class InvertibleLinearLU(FlowLayer):
    """Glow's invertible 1x1 convolution in LU form (Kingma & Dhariwal 2018, Sec. 3.2, eq. 10):
    ``W = P L (U + diag(sign(s) exp(log|s|)))`` with a fixed permutation ``P``, unit lower-triangular ``L`` and
    strictly upper-triangular ``U``, applied to the channels at every position (a vector's features: one
    position). ``log|det| = H W sum(log|s|)``. Initialised at a random rotation (from the global RNG).

    Example:
        >>> import torch
        >>> layer = InvertibleLinearLU(3)
        >>> x = torch.randn(2, 3, 4, 4)
        >>> z, logdet = layer(x)
        >>> bool(torch.allclose(logdet, 16 * torch.logdet(layer.weight()).abs().expand(2), atol=1e-5))
        True
    """

    def __init__(self, num_channels: int):
        super().__init__()
        c = num_channels
        q, _ = torch.linalg.qr(torch.randn(c, c, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p.float())
        self.register_buffer("sign_s", torch.sign(s).float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(c, c), -1))
        self.lower = nn.Parameter(torch.tril(lower, -1).float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_s = nn.Parameter(torch.log(s.abs()).float())

    def weight(self) -> Tensor:
        """``W [C, C]``."""
        eye = torch.eye(self.log_s.shape[0], dtype=self.log_s.dtype, device=self.log_s.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.perm @ lower @ upper

    @staticmethod
    def _mix(w: Tensor, x: Tensor) -> Tensor:
        return torch.einsum("ij,bj...->bi...", w.to(x.dtype), x)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._mix(self.weight(), x), (_spatial(x) * self.log_s.sum()).expand(x.shape[0]).to(x.dtype)

    def inverse(self, z: Tensor) -> Tensor:
        return self._mix(torch.linalg.inv(self.weight()), z)


# ---- multi-scale --------------------------------------------------------------------------------------------------
class Squeeze(FlowLayer):
    """``[C, H, W] -> [4C, H/2, W/2]``: each 2x2 block of pixels becomes 4 channels (Dinh et al. 2017, Sec. 3.6);
    a permutation, ``log|det| = 0``. H and W must be even.

    >>> import torch
    >>> x = torch.arange(16.).reshape(1, 1, 4, 4)
    >>> z, _ = Squeeze()(x)
    >>> tuple(z.shape), z[0, :, 0, 0].tolist(), bool(torch.equal(Squeeze().inverse(z), x))
    ((1, 4, 2, 2), [0.0, 1.0, 4.0, 5.0], True)
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"squeeze needs an even height and width, got {h}x{w}")
        z = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)
        return z, x.new_zeros(b)

    def inverse(self, z: Tensor) -> Tensor:
        b, c4, h, w = z.shape
        c = c4 // 4
        return z.reshape(b, c, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c, 2 * h, 2 * w)

    def out_shape(self, shape: Shape) -> Shape:
        c, h, w = shape
        if h % 2 or w % 2:
            raise ValueError(f"squeeze needs an even height and width, got {h}x{w}")
        return (4 * c, h // 2, w // 2)


class FactorOut(FlowLayer):
    """RealNVP's multi-scale step (Dinh et al. 2017, Sec. 3.6, eq. 13-14): the first ``C // 2`` channels go on
    through ``inner``; the other half is factored out, already a latent. The output is flat:
    ``[inner(x_kept) flattened, x_out flattened]``, so ``out_shape = (prod(shape),)``.

    Args:
        in_shape: ``(C, H, W)`` with ``C >= 2``.
        inner: a :class:`FlowSequence` on ``(C // 2, H, W)``.
    """

    def __init__(self, in_shape: Sequence[int], inner: FlowSequence):
        super().__init__()
        self.in_shape: Shape = tuple(int(s) for s in in_shape)
        self.keep = self.in_shape[0] // 2
        if self.keep < 1:
            raise ValueError(f"factoring out half the channels needs C >= 2, got shape {self.in_shape}")
        kept = (self.keep, *self.in_shape[1:])
        if inner.in_shape != kept:
            raise ValueError(f"the inner flow must take {kept}, it takes {inner.in_shape}")
        self.inner = inner
        self.inner_numel = math.prod(inner.final_shape)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z, logdet = self.inner(x[:, :self.keep])
        return torch.cat([z.flatten(1), x[:, self.keep:].flatten(1)], 1), logdet

    def inverse(self, z: Tensor) -> Tensor:
        b = z.shape[0]
        inner = self.inner.inverse(z[:, :self.inner_numel].reshape(b, *self.inner.final_shape))
        rest = z[:, self.inner_numel:].reshape(b, self.in_shape[0] - self.keep, *self.in_shape[1:])
        return torch.cat([inner, rest], 1)

    def out_shape(self, shape: Shape) -> Shape:
        return (math.prod(shape),)
