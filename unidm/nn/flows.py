"""NICE, RealNVP and Glow built from the layers of :mod:`unidm.nn.flow_layers`, for vectors and images.

Each builder returns a :class:`~unidm.nn.flow_layers.FlowSequence` from data of per-example shape ``(D,)`` or
``(C, H, W)`` to a latent of the same number of elements (flat after a multi-scale factoring out); the density is
``log N(z; 0, I) + log|det dz/dx|`` (:mod:`unidm.methods.flows`).

=========  ===================================================  ==================================================
builder    vectors ``(D,)``                                     images ``(C, H, W)``
=========  ===================================================  ==================================================
NICE       ``couplings`` additive couplings (MLPs, masks         the same on the flattened image (the paper's MNIST
           alternating halves / even-odd), diagonal scaling      model, Dinh et al. 2014, Sec. 5.1)
RealNVP    ``couplings`` affine couplings (tanh scale)           per level 3 checkerboard couplings, squeeze,
                                                                 3 channel couplings, factor out half; the last
                                                                 level 4 checkerboard couplings (Dinh et al. 2017,
                                                                 Sec. 4.1); ResNet couplings
Glow       ``steps`` x [actnorm, LU linear, affine coupling]     per level squeeze, ``steps`` x [actnorm, 1x1 LU
                                                                 conv, affine coupling], factor out half but at
                                                                 the last level (Kingma & Dhariwal 2018, Fig. 2)
=========  ===================================================  ==================================================

Every coupling network's last layer starts at zero, so the flow starts at (nearly) the identity. Not reproduced:
RealNVP's batch normalization (a batch statistic would make a sample depend on its batch) and Glow's learned prior
for factored-out latents (they are standard normal here, as in RealNVP).

Example:
    >>> import torch
    >>> flow = glow_flow((1, 4, 4), steps=2, hidden=8, levels=2)
    >>> z, logdet = flow(torch.randn(3, 1, 4, 4))
    >>> tuple(z.shape), tuple(logdet.shape)
    ((3, 16), (3,))
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from .flow_layers import (ActNorm, Coupling, DiagonalScaling, FactorOut, FlowLayer, FlowSequence, InvertibleLinearLU,
                          Squeeze, channel_mask, checkerboard_mask, feature_mask)

__all__ = ["CouplingMLP", "CouplingConvNet", "Flatten", "nice_flow", "realnvp_flow", "glow_flow", "FLOW_BUILDERS",
           "check_squeezable"]


class CouplingMLP(nn.Module):
    """``[B, D] -> [B, out_features]``: ``depth`` hidden layers of width ``hidden`` with ReLU (as RealNVP's and NICE's
    conditioners; on 2-D moons SiLU trained slower: 1.66 against 1.34 nats after 350 steps), the last layer zero.

    >>> import torch
    >>> CouplingMLP(2, 4, hidden=8, depth=2)(torch.randn(3, 2)).abs().max().item()
    0.0
    """

    def __init__(self, in_features: int, out_features: int, hidden: int = 64, depth: int = 2):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        last = nn.Linear(width, out_features)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 1)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.conv2(nn.functional.silu(self.conv1(nn.functional.silu(h))))


class CouplingConvNet(nn.Module):
    """``[B, C, H, W] -> [B, out_channels, H, W]``: a 3x3 convolution to ``hidden`` channels, ``num_blocks``
    residual blocks (3x3 then 1x1 convolutions, SiLU; RealNVP's ResNet and Glow's 3-layer net, Kingma & Dhariwal
    2018, Sec. 3.3), a zero-initialised 3x3 convolution out. With ``mask`` the mask is an extra input channel, so the
    network knows which pixels a checkerboard coupling passes through.

    >>> import torch
    >>> tuple(CouplingConvNet(1, 2, hidden=8, num_blocks=1)(torch.randn(3, 1, 4, 4)).shape)
    (3, 2, 4, 4)
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 32, num_blocks: int = 1,
                 mask: Tensor | None = None):
        super().__init__()
        self.register_buffer("mask", None if mask is None else mask[:1].float().clone())
        self.conv_in = nn.Conv2d(in_channels + (mask is not None), hidden, 3, padding=1)
        self.blocks = nn.Sequential(*[_ResBlock(hidden) for _ in range(num_blocks)])
        self.conv_out = nn.Conv2d(hidden, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.mask is not None:
            x = torch.cat([x, self.mask.to(x.dtype).expand(x.shape[0], 1, *x.shape[2:])], 1)
        return self.conv_out(nn.functional.silu(self.blocks(self.conv_in(x))))


class Flatten(FlowLayer):
    """``[B, *shape] -> [B, prod(shape)]``, ``log|det| = 0`` (NICE on images works on the flat vector).

    >>> import torch
    >>> tuple(Flatten((1, 2, 2))(torch.zeros(3, 1, 2, 2))[0].shape)
    (3, 4)
    """

    def __init__(self, shape: Sequence[int]):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.flatten(1), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        return z.reshape(z.shape[0], *self.shape)

    def out_shape(self, shape) -> tuple[int, ...]:
        return (math.prod(shape),)


def _vector_mask(dim: int, i: int) -> Tensor:
    """The ``i``-th coupling's mask: halves for pairs 0, 2, ..., even/odd features for pairs 1, 3, ... (for
    ``D = 2`` both are the same), parity alternating, so every feature is transformed and conditions the others."""
    return feature_mask(dim, "half" if (i // 2) % 2 == 0 else "alternate", i % 2)


def _check_vector(shape: Sequence[int], what: str) -> int:
    dim = math.prod(shape)
    if dim < 2:
        raise ValueError(f"{what} needs at least 2 dimensions to couple, got data shape {tuple(shape)}")
    return dim


def nice_flow(shape: Sequence[int], couplings: int = 4, hidden: int = 64, depth: int = 2) -> FlowSequence:
    """NICE (Dinh et al. 2014): ``couplings`` additive couplings (MLPs of ``depth`` x ``hidden``) on the flattened
    data, then the diagonal scaling of Sec. 3.3.

    >>> import torch
    >>> flow = nice_flow((2,), couplings=2, hidden=8)
    >>> float(flow(torch.randn(4, 2))[1].detach().abs().max())  # volume preserving until the scaling is trained
    0.0
    """
    dim = _check_vector(shape, "NICE")
    layers: list[FlowLayer] = [Flatten(shape)] if len(shape) > 1 else []
    layers += [Coupling(_vector_mask(dim, i), CouplingMLP(dim, dim, hidden, depth), "additive")
               for i in range(couplings)]
    layers.append(DiagonalScaling((dim,)))
    return FlowSequence(layers, shape)


def check_squeezable(shape: Sequence[int], squeezes: int, what: str) -> None:
    """Refuse an image whose H or W the flow cannot halve ``squeezes`` times, naming what is allowed."""
    if len(shape) != 3:
        raise ValueError(f"{what} on images takes per-example shape (C, H, W), got {tuple(shape)}")
    c, h, w = shape
    f = 2 ** squeezes
    if h % f or w % f:
        most = 0
        while h % 2 ** (most + 1) == 0 and w % 2 ** (most + 1) == 0:
            most += 1
        raise ValueError(f"{what} squeezes the image {squeezes} time(s), so H and W must be multiples of {f}; got "
                         f"{c}x{h}x{w}, which allows {most} squeeze(s) (set model.levels accordingly, or crop or pad "
                         f"the images)")


def realnvp_flow(shape: Sequence[int], couplings: int = 8, hidden: int = 64, depth: int = 2, levels: int = 2,
                 num_blocks: int = 2) -> FlowSequence:
    """RealNVP (Dinh et al. 2017). Vectors: ``couplings`` affine couplings (tanh-bounded scale, MLPs of ``depth``
    x ``hidden``). Images: ``levels`` scales of the paper's Sec. 4.1 architecture with ResNet couplings of
    ``hidden`` channels and ``num_blocks`` blocks; H and W must be multiples of ``2^(levels - 1)``.

    >>> import torch
    >>> flow = realnvp_flow((2, 4, 4), hidden=8, levels=2, num_blocks=1)
    >>> x = torch.randn(3, 2, 4, 4)
    >>> z, _ = flow(x)
    >>> tuple(z.shape), bool(torch.allclose(flow.inverse(z), x, atol=1e-6))
    ((3, 32), True)
    """
    if len(shape) == 1:
        dim = _check_vector(shape, "RealNVP")
        return FlowSequence([Coupling(_vector_mask(dim, i), CouplingMLP(dim, 2 * dim, hidden, depth), "tanh")
                             for i in range(couplings)], shape)
    check_squeezable(shape, levels - 1, f"RealNVP with {levels} level(s)")
    return _realnvp_level(tuple(shape), hidden, num_blocks, levels)


def _realnvp_level(shape: tuple[int, ...], hidden: int, num_blocks: int, levels: int) -> FlowSequence:
    c, h, w = shape

    def checker(i: int) -> Coupling:
        m = checkerboard_mask(shape, i % 2)
        return Coupling(m, CouplingConvNet(c, 2 * c, hidden, num_blocks, mask=m), "tanh")

    if levels == 1:
        return FlowSequence([checker(i) for i in range(4)], shape)
    squeezed = (4 * c, h // 2, w // 2)
    layers: list[FlowLayer] = [checker(i) for i in range(3)] + [Squeeze()]
    layers += [Coupling(channel_mask(squeezed, i % 2), CouplingConvNet(4 * c, 8 * c, hidden, num_blocks), "tanh")
               for i in range(3)]
    inner = _realnvp_level((2 * c, h // 2, w // 2), hidden, num_blocks, levels - 1)
    layers.append(FactorOut(squeezed, inner))
    return FlowSequence(layers, shape)


def glow_flow(shape: Sequence[int], steps: int = 8, hidden: int = 64, depth: int = 2, levels: int = 2,
              num_blocks: int = 1) -> FlowSequence:
    """Glow (Kingma & Dhariwal 2018). Each step of flow is actnorm, an invertible 1x1 convolution in LU form and an
    affine coupling (sigmoid scale) on half the channels. Vectors: ``steps`` steps (MLPs of ``depth`` x
    ``hidden``; the LU linear map mixes all features). Images: ``levels`` levels of squeeze, ``steps`` steps and
    factoring out half (not after the last); H and W must be multiples of ``2^levels``.

    >>> flow = glow_flow((2,), steps=2, hidden=8)
    >>> [type(layer).__name__ for layer in flow.layers[:3]]
    ['ActNorm', 'InvertibleLinearLU', 'Coupling']
    """
    if len(shape) == 1:
        dim = _check_vector(shape, "Glow")
        layers: list[FlowLayer] = []
        for _ in range(steps):
            layers += [ActNorm(dim), InvertibleLinearLU(dim),
                       Coupling(feature_mask(dim), CouplingMLP(dim, 2 * dim, hidden, depth), "sigmoid")]
        return FlowSequence(layers, shape)
    check_squeezable(shape, levels, f"Glow with {levels} level(s)")
    return _glow_level(tuple(shape), steps, hidden, num_blocks, levels)


def _glow_level(shape: tuple[int, ...], steps: int, hidden: int, num_blocks: int, levels: int) -> FlowSequence:
    c, h, w = shape
    s = (4 * c, h // 2, w // 2)
    layers: list[FlowLayer] = [Squeeze()]
    for _ in range(steps):
        layers += [ActNorm(4 * c), InvertibleLinearLU(4 * c),
                   Coupling(channel_mask(s), CouplingConvNet(4 * c, 8 * c, hidden, num_blocks), "sigmoid")]
    if levels > 1:
        layers.append(FactorOut(s, _glow_level((2 * c, h // 2, w // 2), steps, hidden, num_blocks, levels - 1)))
    return FlowSequence(layers, shape)


#: builder per flow family name
FLOW_BUILDERS = {"nice": nice_flow, "realnvp": realnvp_flow, "glow": glow_flow}
