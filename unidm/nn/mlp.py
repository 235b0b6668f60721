"""A residual MLP for flat vectors; knows nothing about noise (it sees ``c_in * x`` and ``c_noise``)."""

from __future__ import annotations

from torch import Tensor, nn

from .embedding import EMBEDDINGS, FourierEmbedding

__all__ = ["MLP"]


class _Block(nn.Module):
    """``h + SiLU(W h + E emb)``: one hidden layer with an additive noise/class embedding and a skip."""

    def __init__(self, hidden: int, emb_dim: int):
        super().__init__()
        self.fc = nn.Linear(hidden, hidden)
        self.emb = nn.Linear(emb_dim, hidden)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return h + nn.functional.silu(self.fc(h) + self.emb(emb))


class MLP(nn.Module):
    """Residual MLP ``F(x_in [B, dim], c_noise [B], class_labels [B] | None) -> [B, dim]``: ``depth`` hidden layers
    of width ``hidden``, each ``h + SiLU(W h + E emb)`` with the embedding of ``c_noise`` (and the class).

    Args:
        dim: data dimension.
        hidden: width; depth: number of residual blocks.
        embedding: ``"fourier"`` (frequencies ~ N(0, fourier_scale^2) on ``c_noise = log(sigma) / 4``; a scale
            of about 1 spans the useful range of noise levels smoothly) or ``"sinusoidal"`` noise embedding.
        num_classes: > 0 adds a class embedding with one extra "null" label (index ``num_classes``) used when
            ``class_labels`` is None or for label dropout in classifier-free guidance.

    Example:
        >>> import torch
        >>> MLP(dim=2, hidden=32, depth=2)(torch.randn(5, 2), torch.zeros(5)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 256,
        depth: int = 3,
        embedding: str = "fourier",
        emb_dim: int = 64,
        num_classes: int = 0,
        fourier_scale: float = 1.0,
    ):
        super().__init__()
        if embedding not in EMBEDDINGS:
            raise ValueError(f"unknown embedding {embedding!r}; valid: {sorted(EMBEDDINGS)}")
        self.dim, self.num_classes = dim, num_classes
        self.noise_emb = (FourierEmbedding(emb_dim, scale=fourier_scale) if embedding == "fourier"
                          else EMBEDDINGS[embedding](emb_dim))
        self.emb_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_Block(hidden, emb_dim) for _ in range(depth))
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, c_noise: Tensor, class_labels: Tensor | None = None) -> Tensor:
        emb = self.emb_mlp(self.noise_emb(c_noise))
        if self.class_emb is not None:
            if class_labels is None:
                class_labels = x.new_full((x.shape[0],), self.num_classes, dtype=None).long()
            emb = emb + self.class_emb(class_labels.long())
        h = self.inp(x.to(self.inp.weight.dtype))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)
