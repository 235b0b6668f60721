"""A small bidirectional Transformer encoder for token sequences; it knows nothing about the corruption process.

It sees tokens (which may include a MASK id, just another vocabulary entry to it), a per-example scalar
``c_noise`` and optional class labels, and returns logits over the vocabulary at every position.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .embedding import EMBEDDINGS

__all__ = ["Transformer", "TokenMLP", "SEQUENCE_NETWORKS"]


class _Block(nn.Module):
    """Pre-LayerNorm encoder block (Vaswani et al. 2017 with the pre-LN order of Xiong et al. 2020), the
    conditioning added as a shift and scale of each LayerNorm (adaLN, Peebles & Xie 2023, DiT Sec. 3.2)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))
        self.ada = nn.Linear(width, 4 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        b, n, w = h.shape
        shift1, scale1, shift2, scale2 = self.ada(cond)[:, None].chunk(4, dim=-1)
        z = self.norm1(h) * (1 + scale1) + shift1
        q, k, v = self.qkv(z).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        h = h + self.proj(a.transpose(1, 2).reshape(b, n, w))
        z = self.norm2(h) * (1 + scale2) + shift2
        return h + self.mlp(z)


class Transformer(nn.Module):
    """Bidirectional Transformer ``F(tokens [B, L] long, c_noise [B], class_labels [B] | None) -> logits [B, L, V]``.

    Args:
        vocab_size: number of input token ids (for masked diffusion: the data's symbols plus MASK).
        seq_len: maximum sequence length (learned position embeddings).
        width, depth, heads, mlp_ratio, dropout: the usual sizes.
        out_size: number of output logits per position (default ``vocab_size``).
        embedding: ``"sinusoidal"`` or ``"fourier"`` embedding of ``c_noise``.
        num_classes: > 0 adds a class embedding with a null label at index ``num_classes``.

    Example:
        >>> net = Transformer(vocab_size=5, seq_len=7, width=32, depth=1, heads=2)
        >>> net(torch.zeros(3, 7, dtype=torch.long), torch.zeros(3)).shape
        torch.Size([3, 7, 5])
    """

    def __init__(
        self,
        vocab_size: int = 3,
        seq_len: int = 64,
        width: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
        out_size: int | None = None,
        embedding: str = "sinusoidal",
        num_classes: int = 0,
    ):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        if embedding not in EMBEDDINGS:
            raise ValueError(f"unknown embedding {embedding!r}; valid: {sorted(EMBEDDINGS)}")
        self.vocab_size, self.seq_len, self.num_classes = vocab_size, seq_len, num_classes
        self.tok = nn.Embedding(vocab_size, width)
        self.pos = nn.Parameter(torch.randn(seq_len, width) * 0.02)
        self.noise_emb = EMBEDDINGS[embedding](width)
        self.cond = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU())
        self.class_emb = nn.Embedding(num_classes + 1, width) if num_classes > 0 else None
        self.blocks = nn.ModuleList(_Block(width, heads, mlp_ratio, dropout) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, out_size or vocab_size)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, c_noise: Tensor, class_labels: Tensor | None = None) -> Tensor:
        b, n = x.shape
        if n > self.seq_len:
            raise ValueError(f"sequence of length {n} is longer than the network's seq_len {self.seq_len}")
        h = self.tok(x.long()) + self.pos[:n]
        emb = self.noise_emb(c_noise.reshape(-1).expand(b))
        if self.class_emb is not None:
            if class_labels is None:
                class_labels = torch.full((b,), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.class_emb(class_labels.long())
        cond = self.cond(emb)
        for block in self.blocks:
            h = block(h, cond)
        return self.out(self.out_norm(h))


class TokenMLP(nn.Module):
    """Residual MLP on the flattened token embeddings of a short fixed-length sequence:
    ``F(tokens [B, L], c_noise [B], class_labels=None) -> logits [B, L, out_size]``.

    Much cheaper than a Transformer for short sequences (e.g. 64 binary pixels) on a CPU; it reuses the residual
    blocks of :class:`unidm.nn.mlp.MLP` on ``L * token_dim`` inputs.

    Example:
        >>> TokenMLP(vocab_size=3, seq_len=8, hidden=32, depth=1)(torch.zeros(2, 8).long(), torch.zeros(2)).shape
        torch.Size([2, 8, 3])
    """

    def __init__(self, vocab_size: int = 3, seq_len: int = 64, token_dim: int = 8, hidden: int = 512, depth: int = 3,
                 out_size: int | None = None, embedding: str = "sinusoidal", num_classes: int = 0):
        super().__init__()
        from .mlp import MLP

        self.seq_len, self.out_size = seq_len, out_size or vocab_size
        self.tok = nn.Embedding(vocab_size, token_dim)
        self.mlp = MLP(dim=seq_len * token_dim, hidden=hidden, depth=depth, embedding=embedding,
                       num_classes=num_classes)
        self.mlp.out = nn.Linear(hidden, seq_len * self.out_size)
        nn.init.zeros_(self.mlp.out.weight)
        nn.init.zeros_(self.mlp.out.bias)

    def forward(self, x: Tensor, c_noise: Tensor, class_labels: Tensor | None = None) -> Tensor:
        b, n = x.shape
        if n != self.seq_len:
            raise ValueError(f"TokenMLP takes sequences of length {self.seq_len}, got {n}")
        h = self.tok(x.long()).reshape(b, -1)
        return self.mlp(h, c_noise.reshape(-1).expand(b), class_labels).reshape(b, n, self.out_size)


SEQUENCE_NETWORKS: dict[str, type[nn.Module]] = {"transformer": Transformer, "token-mlp": TokenMLP}
