"""A small gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders") for
discrete images, with a categorical output over the data's levels (van den Oord et al. 2016, "Pixel Recurrent Neural
Networks", Sec. 5.3: a 256-way softmax for 8-bit pixels; here ``K`` = the data's levels: 2 for binary digits, 17 for
digits, 256 for 8-bit images).

**Blind-spot free.** A stack of masked 3x3 convolutions misses a growing wedge of the pixels above and to the right
(the "blind spot", van den Oord et al. 2016b, Fig. 1). The gated PixelCNN removes it with two stacks
(Sec. 2.2, Fig. 2): a *vertical* stack whose output at row ``i`` sees every row ``<= i`` (a ``(k//2 + 1) x k``
convolution over rows above and the row itself), fed to the horizontal stack shifted down by one row, so it carries
rows ``< i`` only; and a *horizontal* stack that sees the row to the left (a ``1 x (k//2 + 1)`` masked convolution:
:class:`unidm.nn.masked.MaskedConv2d` with a ``(1, k)`` kernel). Each layer is gated,
``y = tanh(W_f * x) . sigmoid(W_g * x)`` (eq. 2), with a residual connection on the horizontal stack; the first
layer's horizontal convolution is of type ``A`` (the pixel itself hidden), every later one type ``B``.

**Colours.** Pixel ``(i, j)``'s colours are drawn in order ``c = 0 .. C - 1`` (R, G, B), so the raster order over
coordinates is ``rank(c, i, j) = (i W + j) C + c``; the horizontal stack's feature channels are interleaved over the
colours (:func:`unidm.nn.masked.channel_groups`). Not included: class conditioning (eq. 4).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..nn.masked import MaskedConv2d
from .autoregressive import AutoregressiveModel, DiscreteData
from .base import TrainableModel

__all__ = ["PixelCNN", "GatedBlock", "raster_order", "PIXELCNN_FAMILIES"]


def raster_order(channels: int, height: int, width: int) -> Tensor:
    """The coordinates of a flattened ``[C, H, W]`` image in sampling order: pixel by pixel in raster order, the
    colours of a pixel in turn.

    >>> raster_order(2, 1, 2).tolist()  # (c, i, j) -> c*H*W + i*W + j: (0,0,0), (1,0,0), (0,0,1), (1,0,1)
    [0, 2, 1, 3]
    """
    c, p = torch.meshgrid(torch.arange(channels), torch.arange(height * width), indexing="ij")
    rank = p * channels + c  # [C, H*W]
    return torch.argsort(rank.flatten())


def _gate(x: Tensor) -> Tensor:
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedBlock(nn.Module):
    """One gated layer with a vertical and a horizontal stack (van den Oord et al. 2016b, Fig. 2).

    Args:
        in_channels: channels of both stacks' inputs; channels: of their outputs (a multiple of ``data_channels``);
        kernel: odd ``k``; first: the first layer (type ``A``, no residual); data_channels: ``C``.
    """

    def __init__(self, in_channels: int, channels: int, kernel: int, first: bool, data_channels: int):
        super().__init__()
        self.k, self.first = kernel, first
        self.v_conv = nn.Conv2d(in_channels, 2 * channels, (kernel // 2 + 1, kernel))
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h_conv = MaskedConv2d(in_channels, 2 * channels, (1, kernel), "A" if first else "B", data_channels)
        self.h_out = MaskedConv2d(channels, channels, (1, 1), "B", data_channels)

    def forward(self, v: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        k = self.k
        v_feat = self.v_conv(F.pad(v, (k // 2, k // 2, k // 2, 0)))  # row i sees rows i - k//2 .. i
        v_down = F.pad(v_feat, (0, 0, 1, 0))[:, :, :-1]  # shifted: row i sees rows < i
        h_feat = self.h_conv(h) + self.v_to_h(v_down)
        h_new = self.h_out(_gate(h_feat))
        return _gate(v_feat), h_new if self.first else h + h_new


class PixelCNN(AutoregressiveModel):
    """Gated, blind-spot-free PixelCNN over discrete images (module docstring), with a ``K``-way softmax per colour
    of every pixel.

    Args:
        channels: feature channels of both stacks (rounded up to a multiple of the colours ``C``).
        layers: gated layers; kernel: odd kernel width ``k`` of the stacks.
        head: channels of the two type-``B`` 1x1 layers before the logits.

    >>> import torch
    >>> codec = DiscreteData("image", 17, (1, 4, 4), (1, 4, 4))
    >>> PixelCNN(codec, channels=8, layers=2).logits(torch.zeros(2, 16)).shape
    torch.Size([2, 16, 17])
    """

    family = "pixelcnn"
    sampler_seed_offset = 50_261
    network_options = ("channels", "layers", "kernel", "head")

    def __init__(self, codec: DiscreteData, channels: int = 64, layers: int = 5, kernel: int = 3, head: int = 128):
        super().__init__(codec)
        if codec.image_shape is None:
            raise ValueError("family 'pixelcnn' needs images (or tokens with meta image_shape, as binary-digits); "
                             f"this data is {codec.kind} of shape {list(codec.shape)}")
        for key, value in (("channels", channels), ("layers", layers), ("head", head)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a whole number >= 1, got {value!r}")
        if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 3 or kernel % 2 == 0:
            raise ValueError(f"kernel must be an odd whole number >= 3, got {kernel!r}")
        c, height, width = codec.image_shape
        self.image_shape = (c, height, width)
        channels = -(-channels // c) * c
        head = -(-head // c) * c
        self.blocks = nn.ModuleList(GatedBlock(c if i == 0 else channels, channels, kernel, i == 0, c)
                                    for i in range(layers))
        self.head = nn.ModuleList([MaskedConv2d(channels, head, 1, "B", c),
                                   MaskedConv2d(head, self.levels * c, 1, "B", c)])
        self.order = raster_order(c, height, width)

    def logits(self, v: Tensor) -> Tensor:
        c, height, width = self.image_shape
        x = v.reshape(len(v), c, height, width)
        vert, hor = x, x
        for block in self.blocks:
            vert, hor = block(vert, hor)
        out = self.head[1](F.relu(self.head[0](F.relu(hor))))  # [B, K * C, H, W]: channel k*C + c is colour c
        out = out.reshape(len(v), self.levels, c, height, width)
        return out.permute(0, 2, 3, 4, 1).reshape(len(v), self.dim, self.levels)


PIXELCNN_FAMILIES: dict[str, type[TrainableModel]] = {"pixelcnn": PixelCNN}
