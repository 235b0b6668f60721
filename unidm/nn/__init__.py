"""Architectures that know nothing about noise: they see ``c_in * x``, ``c_noise`` and conditioning."""

from .diffusers_unet import DIFFUSERS_NETWORKS  # diffusers itself is imported only when one is built
from .embedding import EMBEDDINGS, FourierEmbedding, SinusoidalEmbedding
from .mlp import MLP
from .seq2seq import SEQ2SEQ_NETWORKS
from .transformer import SEQUENCE_NETWORKS
from .unet import IMAGE_NETWORKS

NETWORKS = {"mlp": MLP, **IMAGE_NETWORKS, **SEQUENCE_NETWORKS, **DIFFUSERS_NETWORKS, **SEQ2SEQ_NETWORKS}

#: constructor arguments a builder fills from the data when the network takes them and the user did not set them
DATA_DERIVED = ("dim", "in_channels", "image_size", "vocab_size", "seq_len", "num_classes")


def build_network(arch: str, derived: dict, **options):
    """``NETWORKS[arch](**options)`` with data-derived sizes (``derived``) filled in where the network takes them;
    an unknown arch or option is refused with the valid ones listed."""
    from ..utils import check_choice, check_kwargs, valid_kwargs

    check_choice(arch, NETWORKS, "model.arch")
    cls = NETWORKS[arch]
    check_kwargs(cls, options, f"model options for {arch!r}")
    accepted = valid_kwargs(cls)
    kwargs = {k: v for k, v in derived.items() if k in accepted and k not in options}
    return cls(**kwargs, **options)

__all__ = ["MLP", "FourierEmbedding", "SinusoidalEmbedding", "EMBEDDINGS", "NETWORKS", "build_network", "DATA_DERIVED"]
