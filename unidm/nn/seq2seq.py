"""A small encoder-decoder Transformer for sequence-to-sequence prediction (Vaswani et al. 2017, Sec. 3.1), with the
pre-LayerNorm order (Xiong et al. 2020).

The encoder reads a padded source sequence and a per-example scalar ``c_noise`` (embedded as one extra token in front,
so an empty source still has something to attend to); the decoder reads a target prefix causally and attends to the
encoder's output. It knows nothing about the corruption: which ids are symbols, padding or start/end tokens is the
caller's business (``src_mask``, and the ids it feeds).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .embedding import EMBEDDINGS

__all__ = ["Seq2SeqTransformer", "SEQ2SEQ_NETWORKS"]


class _Attention(nn.Module):
    """Multi-head scaled dot-product attention of ``q_in [B, T, W]`` over ``kv_in [B, S, W]``;
    ``mask [B or 1, T or 1, S]`` is True where attending is allowed."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, q_in: Tensor, kv_in: Tensor, mask: Tensor) -> Tensor:
        b, t, w = q_in.shape
        h = self.heads
        q = self.q(q_in).view(b, t, h, w // h).transpose(1, 2)
        k, v = self.kv(kv_in).view(b, kv_in.shape[1], 2, h, w // h).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
        return self.proj(a.transpose(1, 2).reshape(b, t, w))


class _Layer(nn.Module):
    """Pre-LN self-attention, optional cross-attention, MLP; each a residual branch."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, cross: bool):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(width), _Attention(width, heads)
        self.cross = _Attention(width, heads) if cross else None
        self.norm2 = nn.LayerNorm(width) if cross else None
        self.norm3 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, h: Tensor, mask: Tensor, memory: Tensor | None = None, memory_mask: Tensor | None = None):
        z = self.norm1(h)
        h = h + self.attn(z, z, mask)
        if self.cross is not None:
            h = h + self.cross(self.norm2(h), memory, memory_mask)
        return h + self.mlp(self.norm3(h))


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder Transformer ``F(src [B, S], src_mask [B, S], c_noise [B], tgt [B, T]) -> logits [B, T, out]``.

    Args:
        vocab_size: number of input ids (source and target share one embedding table).
        seq_len: longest source and target (learned position embeddings).
        width, enc_depth, dec_depth, heads, mlp_ratio: the usual sizes.
        out_size: logits per target position (default ``vocab_size``).
        embedding: ``"sinusoidal"`` or ``"fourier"`` embedding of ``c_noise``.

    Target position ``j`` sees target positions ``<= j`` only (causal), so ``logits[:, j]`` is a prediction of the
    token after ``tgt[:, :j + 1]``. :meth:`encode` once, then :meth:`decode` as often as a decoding loop needs.

    Example:
        >>> net = Seq2SeqTransformer(vocab_size=6, seq_len=5, width=16, enc_depth=1, dec_depth=1, heads=2)
        >>> src, tgt = torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)
        >>> mask = torch.tensor([[True] * 5, [False] * 5])  # the second source is empty
        >>> net(src, mask, torch.rand(2), tgt).shape
        torch.Size([2, 3, 6])
    """

    def __init__(self, vocab_size: int = 4, seq_len: int = 16, width: int = 128, enc_depth: int = 2,
                 dec_depth: int = 2, heads: int = 4, mlp_ratio: int = 4, out_size: int | None = None,
                 embedding: str = "sinusoidal"):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        if embedding not in EMBEDDINGS:
            raise ValueError(f"unknown embedding {embedding!r}; valid: {sorted(EMBEDDINGS)}")
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.tok = nn.Embedding(vocab_size, width)
        self.hint_tok = nn.Embedding(vocab_size, width)
        self.hint_count = nn.Embedding(seq_len + 1, width)
        self.src_pos = nn.Parameter(torch.randn(seq_len, width) * 0.02)
        self.tgt_pos = nn.Parameter(torch.randn(seq_len, width) * 0.02)
        self.noise_emb = EMBEDDINGS[embedding](width)
        self.cond = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.encoder = nn.ModuleList(_Layer(width, heads, mlp_ratio, cross=False) for _ in range(enc_depth))
        self.decoder = nn.ModuleList(_Layer(width, heads, mlp_ratio, cross=True) for _ in range(dec_depth))
        self.enc_norm, self.out_norm = nn.LayerNorm(width), nn.LayerNorm(width)
        self.out = nn.Linear(width, out_size or vocab_size)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def encode(self, src: Tensor, src_mask: Tensor, c_noise: Tensor) -> tuple[Tensor, Tensor]:
        """``(memory [B, 1 + S, W], memory_mask [B, 1, 1 + S])``: the ``c_noise`` token, then the source."""
        b, s = src.shape
        if s > self.seq_len:
            raise ValueError(f"source of length {s} is longer than the network's seq_len {self.seq_len}")
        cond = self.cond(self.noise_emb(c_noise.reshape(-1).expand(b)))[:, None]
        h = torch.cat([cond, self.tok(src.long()) + self.src_pos[:s]], dim=1)
        keys = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=src.device), src_mask.bool()], dim=1)[:, None]
        for layer in self.encoder:
            h = layer(h, keys)
        return self.enc_norm(h), keys

    def decode(self, memory: Tensor, memory_mask: Tensor, tgt: Tensor, hint: Tensor | None = None,
               hint_count: Tensor | None = None) -> Tensor:
        """Logits ``[B, T, out]`` of the token after each target prefix.

        ``hint [B, T]`` (ids) and ``hint_count [B, T]`` (``0 .. seq_len``): optional per-position side inputs, added
        as embeddings to the target's (a caller's running state, e.g. the next source token still to be copied and
        how many are left)."""
        t = tgt.shape[1]
        if t > self.seq_len:
            raise ValueError(f"target of length {t} is longer than the network's seq_len {self.seq_len}")
        h = self.tok(tgt.long()) + self.tgt_pos[:t]
        if hint is not None:
            h = h + self.hint_tok(hint.long())
        if hint_count is not None:
            h = h + self.hint_count(hint_count.long().clamp(0, self.seq_len))
        causal = torch.ones(t, t, dtype=torch.bool, device=tgt.device).tril()[None]
        for layer in self.decoder:
            h = layer(h, causal, memory, memory_mask)
        return self.out(self.out_norm(h))

    def forward(self, src: Tensor, src_mask: Tensor, c_noise: Tensor, tgt: Tensor, hint: Tensor | None = None,
                hint_count: Tensor | None = None) -> Tensor:
        return self.decode(*self.encode(src, src_mask, c_noise), tgt, hint, hint_count)


SEQ2SEQ_NETWORKS: dict[str, type[nn.Module]] = {"seq2seq": Seq2SeqTransformer}
