"""Masked layers for autoregressive networks: a linear layer with a connectivity mask (MADE, Germain et al. 2015,
eq. 9) and convolutions masked to the raster order (PixelCNN, van den Oord et al. 2016, "Pixel Recurrent Neural
Networks", Sec. 3.4 and Fig. 2; the gated stacks of van den Oord et al. 2016, "Conditional Image Generation with
PixelCNN Decoders", Sec. 2.1-2.2).

Channels of a masked convolution are assigned to the data's colour channels by ``channel % data_channels``
(interleaved), so a layer's output channel ``o`` belongs to colour ``o % C``: at the centre pixel a type ``A`` mask lets
colour ``c`` see only colours ``< c`` of the input, type ``B`` colours ``<= c``. With ``C = 1`` type A hides the
centre pixel and type B shows it. Interleaving keeps the assignment whole when a layer's output is split into halves
(the gate of a gated block) whose sizes are multiples of ``C``.

Example:
    >>> import torch
    >>> conv = MaskedConv2d(1, 4, (3, 3), "A")
    >>> conv.mask[0, 0].int().tolist()  # rows above, and the left of the centre row
    [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    >>> layer = MaskedLinear(3, 2, torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]))
    >>> layer(torch.ones(1, 3)).shape
    torch.Size([1, 2])
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["MaskedLinear", "MaskedConv2d", "raster_conv_mask", "channel_groups"]


class MaskedLinear(nn.Linear):
    """``y = x (W * M)^T + b``: a linear layer whose weight is multiplied by a 0/1 mask ``M [out, in]`` (MADE,
    Germain et al. 2015, eq. 9).

    The mask given at construction is a non-persistent buffer (it follows ``.to(device)`` and is not saved: it is a
    function of the architecture); ``forward(x, mask)`` takes another one for one call, as order- and
    connectivity-agnostic training draws a new mask every step.
    """

    def __init__(self, in_features: int, out_features: int, mask: Tensor | None = None, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        if mask is None:
            mask = torch.ones(out_features, in_features)
        self._check(mask)
        self.register_buffer("mask", mask.to(self.weight.dtype).clone(), persistent=False)

    def _check(self, mask: Tensor) -> None:
        if tuple(mask.shape) != (self.out_features, self.in_features):
            raise ValueError(f"mask of shape {tuple(mask.shape)} for a linear layer {self.in_features} -> "
                             f"{self.out_features}; expected ({self.out_features}, {self.in_features})")

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is None:
            mask = self.mask
        else:
            self._check(mask)
        return F.linear(x, self.weight * mask.to(self.weight), self.bias)


def channel_groups(channels: int, data_channels: int) -> Tensor:
    """The colour channel each of ``channels`` feature channels belongs to: ``arange(channels) % data_channels``."""
    return torch.arange(channels) % data_channels


def raster_conv_mask(out_channels: int, in_channels: int, kernel_size: Sequence[int], mask_type: str,
                     data_channels: int = 1) -> Tensor:
    """The 0/1 mask ``[out, in, kh, kw]`` of a convolution over the raster order (van den Oord et al. 2016, Fig. 2):
    every row above the centre, the centre row left of the centre, and at the centre the colour rule of
    ``mask_type`` (``A``: input colour < output colour; ``B``: <=) with channels interleaved over
    ``data_channels`` colours (:func:`channel_groups`)."""
    if mask_type not in ("A", "B"):
        raise ValueError(f"unknown mask type {mask_type!r}; valid: A, B")
    kh, kw = (int(k) for k in kernel_size)
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"a masked convolution needs odd kernel sizes, got {kh}x{kw}")
    mask = torch.zeros(out_channels, in_channels, kh, kw)
    mask[:, :, : kh // 2] = 1
    mask[:, :, kh // 2, : kw // 2] = 1
    go = channel_groups(out_channels, data_channels)[:, None]
    gi = channel_groups(in_channels, data_channels)[None, :]
    centre = gi < go if mask_type == "A" else gi <= go
    mask[:, :, kh // 2, kw // 2] = centre.float()
    return mask


class MaskedConv2d(nn.Conv2d):
    """A 'same'-padded convolution whose kernel is masked to the raster order and the colour order
    (:func:`raster_conv_mask`): the output at pixel ``(i, j)``, colour ``c``, depends only on input pixels before
    ``(i, j)`` in raster order and on the colours of ``(i, j)`` before ``c`` (type ``A``) or up to ``c`` (type ``B``).

    A ``(1, k)`` kernel is the horizontal stack's convolution of a gated PixelCNN (van den Oord et al. 2016b, Fig. 2).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Sequence[int] | int, mask_type: str,
                 data_channels: int = 1):
        ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        super().__init__(in_channels, out_channels, ks, padding=(ks[0] // 2, ks[1] // 2))
        self.mask_type = mask_type
        self.register_buffer("mask", raster_conv_mask(out_channels, in_channels, ks, mask_type, data_channels),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight * self.mask.to(self.weight), self.bias)
