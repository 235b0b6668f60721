"""Architectures that know nothing about noise: they see ``c_in * x``, ``c_noise`` and conditioning."""

from .embedding import EMBEDDINGS, FourierEmbedding, SinusoidalEmbedding
from .mlp import MLP

NETWORKS = {"mlp": MLP}

__all__ = ["MLP", "FourierEmbedding", "SinusoidalEmbedding", "EMBEDDINGS", "NETWORKS"]
