"""A variational autoencoder (Kingma & Welling 2014) of discrete data, scored by the importance-weighted bound
(IWAE, Burda et al. 2016).

Prior ``p(z) = N(0, I)``; Gaussian encoder ``q(z | x) = N(mu(x), diag sigma(x)^2)``; a decoder with one categorical
over the data's ``K`` levels per coordinate (:class:`unidm.methods.autoregressive.DiscreteData`: the Bernoulli
decoder for binary data, a discretized decoder for ``K``-level images), so ``p(x | z)`` is a probability of the
discrete data itself and every bound below bounds ``log P(x)`` of the discrete data (the number the one
dequantization gives every family: docs/density.md).

- Training maximizes the ELBO (Kingma & Welling 2014, eq. 10) with one reparameterized draw and the Gaussian KL in
  closed form (their App. B).
- The likelihood is IWAE's bound (Burda et al. 2016, eq. 8) with ``S`` samples,
  ``L_S(x) = E log (1/S) sum_s p(x, z_s) / q(z_s | x)``, ``L_1 = ELBO <= L_S <= L_{S'} <= log p(x)`` for
  ``S <= S'`` (their Theorem 1), ``L_S -> log p(x)`` as ``S -> inf``. One draw of it is reported per example
  (``kind="bound"``: an estimate of a lower bound on ``log P(x)``, so its NLL is an upper bound in expectation).
- Samples are ancestral: ``z ~ p(z)``, then every coordinate from ``p(x | z)``, all from the sample's seed.

Example:
    >>> import torch
    >>> from unidm.data import Dataset
    >>> x = torch.randint(2, (20, 6))
    >>> vae = VAE.from_config({"hidden": 16, "latent": 2}, {}, Dataset("bits", x, x[:4], kind="tokens", vocab_size=2))
    >>> g = torch.Generator().manual_seed(0)
    >>> bool((vae.iwae(x[:4], samples=50, generator=g) <= 0).all())
    True
    >>> vae.generate(2, seeds=[0, 1]).shape
    torch.Size([2, 6])
"""

from __future__ import annotations

import math
from typing import ClassVar, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..rng import Generators, randn
from .autoregressive import DiscreteData, ancestral, sample_categorical, split_options
from .base import DirectSampling, SupportsLikelihood, TrainableModel

__all__ = ["VAE", "VAE_FAMILIES"]

_LOG_2PI = math.log(2 * math.pi)


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def _log_normal(z: Tensor, mu: Tensor, log_var: Tensor) -> Tensor:
    """``log N(z; mu, diag exp(log_var))`` summed over the last axis."""
    return -0.5 * ((z - mu) ** 2 * torch.exp(-log_var) + log_var + _LOG_2PI).sum(-1)


class VAE(DirectSampling, SupportsLikelihood):
    """VAE with a Gaussian encoder and a categorical decoder over the data's levels (module docstring).

    Args:
        hidden: units of the encoder's and the decoder's hidden layers; depth: hidden layers of each;
        latent: dimension of ``z``.
    """

    family = "vae"
    samplers: ClassVar[Mapping] = {"ancestral": ancestral}
    sampler_seed_offset = 51_109
    network_options: ClassVar[tuple[str, ...]] = ("hidden", "depth", "latent")

    def __init__(self, codec: DiscreteData, hidden: int = 256, depth: int = 2, latent: int = 16):
        super().__init__(codec.shape)
        for key, value in (("hidden", hidden), ("depth", depth), ("latent", latent)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a whole number >= 1, got {value!r}")
        self.codec, self.levels, self.dim, self.latent = codec, codec.levels, codec.dim, latent
        self.encoder = _mlp([self.dim] + [hidden] * depth + [2 * latent])
        self.decoder = _mlp([latent] + [hidden] * depth + [self.dim * self.levels])

    def encode(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, log_var)`` ``[B, latent]`` each, of ``q(z | x)`` for the levels ``idx [B, D]``."""
        mu, log_var = self.encoder(self.codec.values(idx, self.dtype)).chunk(2, dim=-1)
        return mu, log_var

    def decode(self, z: Tensor) -> Tensor:
        """Logits ``[..., D, K]`` of ``p(x | z)`` for ``z [..., latent]``."""
        return self.decoder(z).reshape(*z.shape[:-1], self.dim, self.levels)

    def log_likelihood(self, idx: Tensor, z: Tensor) -> Tensor:
        """``log p(x | z)`` ``[..., B]`` of the levels ``idx [B, D]`` for latents ``z [..., B, latent]`` (or any
        shape that broadcasts against ``B``, e.g. ``[Z, 1, latent]``)."""
        logp = torch.log_softmax(self.decode(z), -1)
        shape = torch.broadcast_shapes(logp.shape[:-1], idx.shape)
        return logp.expand(*shape, self.levels).gather(-1, idx.expand(shape)[..., None]).squeeze(-1).sum(-1)

    def elbo(self, x: Tensor, generator: Generators = None) -> Tensor:
        """One-draw ELBO ``[B]`` (Kingma & Welling 2014, eq. 10): ``log p(x | z) - KL(q(z | x) || N(0, I))`` with
        ``z = mu + sigma eps``, ``eps`` from ``generator``."""
        idx = self.codec.to_index(x).to(self.device)
        mu, log_var = self.encode(idx)
        z = mu + torch.exp(0.5 * log_var) * randn(mu.shape, generator, mu.dtype, mu.device)
        kl = 0.5 * (mu**2 + torch.exp(log_var) - 1 - log_var).sum(-1)
        return self.log_likelihood(idx, z) - kl

    @torch.no_grad()
    def iwae(self, x: Tensor, samples: int = 100, generator: torch.Generator | None = None,
             chunk: int = 50) -> Tensor:
        """One draw of IWAE's bound ``[B]`` (Burda et al. 2016, eq. 8) with ``samples`` importance samples,
        ``log (1/S) sum_s p(x | z_s) p(z_s) / q(z_s | x)``, ``z_s ~ q(z | x)``, drawn ``chunk`` at a time."""
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples (importance samples per example) must be a whole number >= 1, got {samples!r}")
        idx = self.codec.to_index(x).to(self.device)
        mu, log_var = self.encode(idx)
        parts = []
        for start in range(0, samples, chunk):
            s = min(chunk, samples - start)
            eps = randn((s, *mu.shape), generator, mu.dtype, mu.device)
            z = mu + torch.exp(0.5 * log_var) * eps
            log_w = (self.log_likelihood(idx, z) + _log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
                     - _log_normal(z, mu, log_var))
            parts.append(log_w.double())
        return torch.logsumexp(torch.cat(parts), 0) - math.log(samples)

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """The negative ELBO per coordinate ``[B]`` (nats)."""
        return -self.elbo(batch["x"], generator) / self.dim

    # --- sampling -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, *, seeds: Sequence[int] | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """``n`` ancestral samples ``[n, *data_shape]``: ``z ~ N(0, I)``, then ``x ~ p(x | z)``; with ``seeds`` sample
        ``i`` uses its seed's generator alone."""
        gens = self.sample_generators(seeds, generator)
        z = randn((n, self.latent), gens, self.dtype, self.device)
        return self.codec.to_data(sample_categorical(self.decode(z), gens))

    # --- the likelihood face --------------------------------------------------------------------------------------
    def likelihood_methods(self) -> dict[str, str]:
        return {"iwae": "bound", "elbo": "bound"}

    def likelihood_options(self, method: str) -> list[str]:
        return ["samples"]

    def likelihood(self, x: Tensor, *, method: str | None = None, num_levels: int | None = None,
                   generator: torch.Generator | None = None, class_labels: Tensor | None = None, **options):
        """``iwae`` (default; ``samples`` = S, default 100): IWAE's bound; ``elbo`` (``samples`` draws averaged,
        default 1): the ELBO. Both in nats of the discrete data and bits/dim, ``kind="bound"``."""
        from ..likelihood import Likelihood, bits_per_dim

        method = self.check_likelihood(method, options)
        self.codec.check_levels(num_levels)
        samples = options.get("samples", 100 if method == "iwae" else 1)
        with self.evaluating(), torch.no_grad():
            if method == "iwae":
                log_p = self.iwae(x, samples, generator)
            else:
                if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
                    raise ValueError(f"samples (ELBO draws per example) must be a whole number >= 1, got {samples!r}")
                log_p = sum(self.elbo(x, generator).double() for _ in range(samples)) / samples
        return Likelihood(nll=-log_p, bits_per_dim=bits_per_dim(log_p, self.dim), kind="bound", nfe=float(samples))

    @classmethod
    def from_config(cls, model_cfg: dict, method_cfg: dict, data,
                    frozen: Mapping[str, TrainableModel] | None = None) -> "VAE":
        """Build for dataset ``data`` (discrete data only): ``model`` holds ``hidden``, ``depth``, ``latent``."""
        return cls(DiscreteData.from_dataset(data, cls.family), **split_options(cls, model_cfg, method_cfg))


VAE_FAMILIES: dict[str, type[TrainableModel]] = {"vae": VAE}
