"""A noise-agnostic UNet for images: residual blocks, group norm, a noise embedding, self-attention at chosen
resolutions.

The layout is DDPM's (Ho et al. 2020, Appendix B: a PixelCNN++-style UNet with Wide-ResNet blocks, group norm,
sinusoidal time embedding added in every block, self-attention at 16x16) with the improvements of Dhariwal & Nichol
2021 ("Diffusion Models Beat GANs", Sec. 3): adaptive group norm (``GroupNorm(h) * (1 + scale) + shift`` from the
embedding), residual blocks that rescale the skip sum by ``1/sqrt(2)``, multi-head attention, and a class embedding
added to the noise embedding. The network sees only ``c_in * x``, ``c_noise`` and an optional class label; all
noise-related algebra lives in :class:`unidm.denoiser.Denoiser`.

Any spatial size works (8x8, 28x28, 32x32, 64x64, odd sizes): a stride-2 convolution rounds up, and every
upsampling goes to the exact size of the skip connection it meets.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .embedding import EMBEDDINGS
from .mlp import MLP

__all__ = ["UNet", "ImageMLP", "IMAGE_NETWORKS"]


def _groups(channels: int, max_groups: int) -> int:
    """The largest group count ``<= max_groups`` that divides ``channels``."""
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    """``h + F(h, emb)`` with ``F = conv(SiLU(AdaGN(conv(SiLU(GN(h))), emb)))`` (Dhariwal & Nichol 2021, Sec. 3;
    the second convolution starts at zero so every block starts as the identity)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in, groups), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out, groups), c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        z = self.conv1(F.silu(self.norm1(h)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        z = F.silu(self.norm2(z) * (1 + scale) + shift)
        z = self.conv2(self.dropout(z))
        return (self.skip(h) + z) / math.sqrt(2)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the ``H*W`` positions (Vaswani et al. 2017; DDPM's attention block),
    residual, with a zero-initialised output projection."""

    def __init__(self, channels: int, groups: int, head_dim: int = 32):
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.norm = nn.GroupNorm(_groups(channels, groups), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: Tensor) -> Tensor:
        b, c, hh, ww = h.shape
        q, k, v = self.qkv(self.norm(h)).reshape(b, 3, self.heads, c // self.heads, hh * ww).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return h + self.proj(out.transpose(-1, -2).reshape(b, c, hh, ww)) / math.sqrt(2)


class _Level(nn.Module):
    """The residual blocks (and attention layers) of one resolution on one side of the UNet."""

    def __init__(self, blocks: list[ResBlock], attn: bool, channels: int, groups: int, head_dim: int):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(SelfAttention(channels, groups, head_dim) if attn else nn.Identity()
                                  for _ in blocks)


class UNet(nn.Module):
    """UNet ``F(x_in [B, C, H, W], c_noise [B], class_labels [B] | None) -> [B, C, H, W]``.

    Args:
        in_channels: image channels (filled from the data by :func:`unidm.nn.build_network`).
        image_size: side of the (square) training images; only used to decide where attention goes.
        channels: width of the first level; level ``i`` has ``channels * channel_mult[i]`` channels.
        channel_mult: one multiplier per resolution; every level but the last halves the resolution.
        num_blocks: residual blocks per level on the way down (the way up has one more, as in DDPM).
        attn_resolutions: resolutions (sides, e.g. ``(16,)``) whose blocks are followed by self-attention; the
            middle block has attention when ``mid_attn`` is true.
        dropout: dropout inside residual blocks (DDPM uses 0.1 on CIFAR-10).
        groups: at most this many group-norm groups (32 in DDPM; fewer for narrow networks).
        head_dim: channels per attention head.
        embedding: ``"fourier"`` or ``"sinusoidal"`` embedding of ``c_noise``; ``emb_dim`` its width (default
            ``4 * channels``).
        num_classes: > 0 adds a class embedding with one extra "null" label (index ``num_classes``) used when
            ``class_labels`` is None and for label dropout in classifier-free guidance.

    Example:
        >>> import torch
        >>> net = UNet(in_channels=1, image_size=8, channels=16, channel_mult=(1, 2), num_blocks=1)
        >>> net(torch.randn(3, 1, 8, 8), torch.zeros(3)).shape
        torch.Size([3, 1, 8, 8])
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        mid_attn: bool = True,
        dropout: float = 0.0,
        groups: int = 32,
        head_dim: int = 32,
        embedding: str = "fourier",
        emb_dim: int | None = None,
        num_classes: int = 0,
    ):
        super().__init__()
        if embedding not in EMBEDDINGS:
            raise ValueError(f"unknown embedding {embedding!r}; valid: {sorted(EMBEDDINGS)}")
        if not channel_mult:
            raise ValueError("channel_mult needs at least one level")
        emb_dim = emb_dim or 4 * channels
        self.in_channels, self.num_classes = in_channels, num_classes
        self.noise_emb = EMBEDDINGS[embedding](channels)
        self.emb_mlp = nn.Sequential(nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None
        self.inp = nn.Conv2d(in_channels, channels, 3, padding=1)

        widths = [channels * m for m in channel_mult]
        attn = set(int(r) for r in attn_resolutions)
        res, c, skips = image_size, channels, [channels]
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        for i, w in enumerate(widths):
            blocks = []
            for _ in range(num_blocks):
                blocks.append(ResBlock(c, w, emb_dim, groups, dropout))
                c = w
                skips.append(c)
            self.down.append(_Level(blocks, res in attn, c, groups, head_dim))
            if i < len(widths) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
                res = (res + 1) // 2
        self.mid1 = ResBlock(c, c, emb_dim, groups, dropout)
        self.mid_attn = SelfAttention(c, groups, head_dim) if mid_attn else nn.Identity()
        self.mid2 = ResBlock(c, c, emb_dim, groups, dropout)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            blocks = []
            for _ in range(num_blocks + 1):
                blocks.append(ResBlock(c + skips.pop(), w, emb_dim, groups, dropout))
                c = w
            self.up.append(_Level(blocks, _side_at(image_size, i) in attn, c, groups, head_dim))
            if i > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
        self.out_norm = nn.GroupNorm(_groups(c, groups), c)
        self.out = nn.Conv2d(c, in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def embed(self, c_noise: Tensor, class_labels: Tensor | None, batch: int) -> Tensor:
        """The per-example embedding ``[B, emb_dim]`` of the noise level and (optional) class label."""
        emb = self.emb_mlp(self.noise_emb(c_noise.reshape(-1).expand(batch)))
        if self.class_emb is not None:
            if class_labels is None:
                class_labels = torch.full((batch,), self.num_classes, dtype=torch.long, device=emb.device)
            emb = emb + self.class_emb(class_labels.long().reshape(batch))
        return emb

    def forward(self, x: Tensor, c_noise: Tensor, class_labels: Tensor | None = None) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        emb = self.embed(c_noise, class_labels, x.shape[0])
        h = self.inp(x.float())
        hs = [h]
        for i, level in enumerate(self.down):
            for block, attn in zip(level.blocks, level.attn):
                h = attn(block(h, emb))
                hs.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for j, level in enumerate(self.up):
            for block, attn in zip(level.blocks, level.attn):
                h = attn(block(torch.cat([h, hs.pop()], dim=1), emb))
            if j < len(self.upsample):
                h = self.upsample[j](F.interpolate(h, size=hs[-1].shape[-2:], mode="nearest"))
        return self.out(F.silu(self.out_norm(h)))


def _side_at(image_size: int, level: int) -> int:
    """The side of level ``level`` (0 = full resolution) under stride-2 convolutions that round up."""
    for _ in range(level):
        image_size = (image_size + 1) // 2
    return image_size


class ImageMLP(nn.Module):
    """The residual :class:`~unidm.nn.mlp.MLP` on flattened images: ``F(x_in [B, C, H, W], c_noise [B],
    class_labels [B] | None) -> [B, C, H, W]``.

    For very small images (8x8 digits: 64 numbers) a dense network sees the whole image in every layer and runs
    an order of magnitude faster on a CPU than a UNet of similar quality, whose 3x3 convolutions on 8x8 maps are
    dominated by per-call overhead. It has no notion of locality, so it does not scale to larger images.

    Args:
        in_channels, image_size: the image shape ``[in_channels, image_size, image_size]`` (filled from the data
            by :func:`unidm.nn.build_network`); the remaining arguments are :class:`~unidm.nn.mlp.MLP`'s.

    Example:
        >>> import torch
        >>> net = ImageMLP(in_channels=1, image_size=8, hidden=32, depth=2)
        >>> net(torch.randn(3, 1, 8, 8), torch.zeros(3)).shape
        torch.Size([3, 1, 8, 8])
    """

    def __init__(self, in_channels: int = 1, image_size: int = 8, hidden: int = 512, depth: int = 3,
                 embedding: str = "fourier", emb_dim: int = 64, num_classes: int = 0, fourier_scale: float = 1.0):
        super().__init__()
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.mlp = MLP(dim=in_channels * image_size**2, hidden=hidden, depth=depth, embedding=embedding,
                       emb_dim=emb_dim, num_classes=num_classes, fourier_scale=fourier_scale)

    def forward(self, x: Tensor, c_noise: Tensor, class_labels: Tensor | None = None) -> Tensor:
        if x.ndim != 4 or x.shape[1:] != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(f"ImageMLP expects [B, {self.in_channels}, {self.image_size}, {self.image_size}], "
                             f"got {tuple(x.shape)}")
        c_noise = c_noise.reshape(-1).expand(x.shape[0])
        return self.mlp(x.flatten(1), c_noise, class_labels).reshape(x.shape)


IMAGE_NETWORKS: dict[str, type[nn.Module]] = {"unet": UNet, "image-mlp": ImageMLP}
