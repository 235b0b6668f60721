"""The typed result of every likelihood estimator: one per-example NLL, its bits/dim, and what kind of number
it is."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

__all__ = ["Likelihood", "KINDS"]

#: ``exact``: the model's own density (flows, autoregressive models); ``ode``: the probability-flow ODE's
#: density (exact up to solver, prior and ``sigma_min`` errors); ``bound``: a variational upper bound on the NLL.
KINDS = ("exact", "ode", "bound")


@dataclass
class Likelihood:
    """Per-example negative log-likelihood of a batch under one estimator."""

    nll: Tensor  # [B] nats; of the discrete data (dequantized) when num_levels was given
    bits_per_dim: Tensor  # [B]
    kind: str  # "exact" | "ode" | "bound"
    nfe: float | None = None
    extra: dict = field(default_factory=dict)  # estimator-specific per-batch facts (e.g. latent_scale [B], sigma_min)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown likelihood kind {self.kind!r}; valid: {', '.join(KINDS)}")
