"""Normalizing flows as exact-likelihood families: NICE, RealNVP and Glow (and, through zuko, MAF and NSF).

A flow is an invertible ``f`` from data ``x`` to a latent ``z = f(x)`` with a standard normal prior, so by the
change of variables (Dinh et al. 2014, eq. 1)

    log p(x) = log N(f(x); 0, I) + log|det df/dx|,

exact in one pass, and a sample is ``x = f^-1(z)``, ``z ~ N(0, I)``. The layers are in :mod:`unidm.nn.flow_layers`
and the architectures in :mod:`unidm.nn.flows`; this module makes them trainable families behind the
:class:`~unidm.methods.base.DensityModel` face (``log_prob``, ``sample`` with one generator per seed, the one
dequantization of :func:`unidm.likelihood.dequantized_log_prob` for ``unidm likelihood``).

**Discrete data** (``data.meta["levels"] = K``, e.g. 17-level digits in [-1, 1]): training draws uniform
dequantization noise ``u ~ U(-Delta/2, Delta/2)`` per element (:func:`unidm.likelihood.dequantize`, the same
convention as the likelihood) and minimises ``-(log p(x + u) + D log Delta) / D``, the dequantization bound on the
discrete data's NLL in nats per dimension; so the training loss divided by ``ln 2`` is the bits/dim that
``unidm likelihood`` reports (Theis et al. 2016; Ho et al. 2020 use the same bins). On continuous data the loss is
``-log p(x) / D``.

**Sampling** has one sampler, ``inverse`` (``x = f^-1(T z)``), whose option ``temperature`` ``T`` (Kingma &
Dhariwal 2018, Sec. 5: reduced-temperature samples) defaults to 1, the model's own law.

Example:
    >>> import torch
    >>> from unidm.nn.flows import realnvp_flow
    >>> model = RealNVP(realnvp_flow((2,), couplings=2, hidden=8), data_shape=(2,))
    >>> x = model.sample(3, seeds=[0, 1, 2])
    >>> tuple(model.log_prob(x).shape), bool(torch.equal(model.sample(1, seeds=[1])[0], x[1]))
    ((3,), True)
"""

from __future__ import annotations

import math
from typing import ClassVar, Mapping, Sequence

import torch
from torch import Tensor

from ..likelihood import bin_width, dequantize
from ..nn.flow_layers import ActNorm, FlowSequence
from ..nn.flows import FLOW_BUILDERS
from ..rng import randn
from ..utils import check_kwargs
from .base import DensityModel, TrainableModel, check_positive

__all__ = ["FlowModel", "NICE", "RealNVP", "Glow", "FLOW_FAMILIES", "FLOW_SAMPLERS", "sample_inverse",
           "standard_normal_log_prob"]

_LOG_2PI = math.log(2 * math.pi)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """``log N(z; 0, I)`` summed over all but the first dimension: ``[B]``."""
    return -0.5 * (z.flatten(1).pow(2).sum(1) + z[0].numel() * _LOG_2PI)


def sample_inverse(inverse, z: Tensor, *, temperature: float = 1.0) -> Tensor:
    """``x = f^-1(T z)``: the flow's own law at ``T = 1``, reduced-temperature samples below (Kingma & Dhariwal
    2018, Sec. 5)."""
    return inverse(temperature * z)


#: the flow families' samplers: ``fn(inverse, z, **options) -> x``
FLOW_SAMPLERS = {"inverse": sample_inverse}


class FlowModel(DensityModel):
    """A normalizing flow with a standard normal prior (module docstring): ``log_prob``, ``sample``, the
    dequantized training loss.

    A subclass gives the bijection by :meth:`transform` ``x -> (z, log|det dz/dx|)``, :meth:`inverse` and
    :attr:`latent_shape`; the default ones use :attr:`flow`, a :class:`~unidm.nn.flow_layers.FlowSequence`.

    Args:
        flow: the bijection (``None`` for a subclass that brings its own).
        data_shape: ``(D,)`` or ``(C, H, W)``.
        num_levels: ``K`` for data on a ``K``-level grid of [-1, 1] (dequantized in training), ``None`` for
            continuous data.
    """

    family: ClassVar[str] = "flow"
    samplers = FLOW_SAMPLERS
    sampler_aliases = {"ancestral": "inverse"}
    grids = ("none",)
    default_sampling = {"sampler": "inverse", "steps": 1, "grid": "none"}
    sampler_seed_offset = 2_400_017
    sampler_internal = ("inverse", "z")

    def __init__(self, flow: FlowSequence | None, data_shape: Sequence[int] = (2,), num_levels: int | None = None):
        super().__init__(data_shape)
        if num_levels is not None and (isinstance(num_levels, bool) or not isinstance(num_levels, int)
                                       or num_levels < 2):
            raise ValueError(f"num_levels must be a whole number >= 2 or None (continuous data), got {num_levels!r}")
        self.num_levels = num_levels
        self.flow = flow
        if flow is not None and flow.in_shape != self.data_shape:
            raise ValueError(f"the flow takes per-example shape {flow.in_shape}, the data have {self.data_shape}")

    # --- the bijection -----------------------------------------------------------------------------------------
    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.flow.final_shape

    def transform(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(z [B, *latent_shape], log|det dz/dx| [B])``."""
        return self.flow(x)

    def inverse(self, z: Tensor) -> Tensor:
        """``x = f^-1(z)``, ``[B, *data_shape]``."""
        return self.flow.inverse(z)

    def check_data(self, x: Tensor) -> Tensor:
        """``x`` in the weights' dtype, or one line naming the shape this model takes."""
        if tuple(x.shape[1:]) != self.data_shape or x.ndim < 1:
            raise ValueError(f"family {self.family!r} was built for data of per-example shape {self.data_shape}, "
                             f"got a batch of shape {tuple(x.shape)}")
        return x.to(self.dtype)

    # --- the density face --------------------------------------------------------------------------------------
    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x) = log N(f(x); 0, I) + log|det df/dx|`` in nats, ``[B]``."""
        z, logdet = self.transform(self.check_data(x))
        return standard_normal_log_prob(z) + logdet

    def sample(self, n: int, *, seeds: Sequence[int] | None = None, generator: torch.Generator | None = None,
               temperature: float = 1.0) -> Tensor:
        """``n`` samples ``f^-1(T z)``; with ``seeds`` sample ``i`` depends only on ``seeds[i]``."""
        gens = self.sample_generators(seeds, generator)
        z = randn((n, *self.latent_shape), gens, dtype=self.dtype, device=self.device)
        return sample_inverse(self.inverse, z, temperature=temperature)

    # --- training ----------------------------------------------------------------------------------------------
    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """Negative log-likelihood in nats per dimension ``[B]``; on discrete data of the uniformly dequantized
        data plus ``D log Delta`` (module docstring)."""
        x = self.check_data(batch["x"])
        dim = x[0].numel()
        if self.num_levels is None:
            return -self.log_prob(x) / dim
        x = dequantize(x, self.num_levels, generator=generator)
        return -(self.log_prob(x) + dim * math.log(bin_width(self.num_levels))) / dim

    @torch.no_grad()
    def initialize(self, x: Tensor, generator: torch.Generator | None = None) -> None:
        """Data-dependent initialisation of every :class:`~unidm.nn.flow_layers.ActNorm` not yet initialised, from
        the (dequantized) batch ``x``: one forward pass in training mode, each layer set on what reaches it."""
        x = self.check_data(x)
        if self.num_levels is not None:
            x = dequantize(x, self.num_levels, generator=generator)
        was = self.training
        self.train()
        try:
            self.transform(x)
        finally:
            self.train(was)

    @classmethod
    def check_flow_data(cls, data) -> None:
        if data.kind not in ("vector", "image"):
            raise ValueError(f"family {cls.family!r} needs continuous data (vectors or images, discrete levels are "
                             f"dequantized), got {data.name!r} of kind {data.kind!r}")

    @classmethod
    def from_config(cls, model_cfg: dict, method_cfg: dict, data,
                    frozen: Mapping[str, TrainableModel] | None = None) -> "FlowModel":
        """The family's architecture (:data:`unidm.nn.flows.FLOW_BUILDERS`) from the ``model`` section; ``method``
        takes ``init_size``: the training examples (a random subset, from the seeded initialisation RNG) that set
        the actnorm layers before the first step, so every process and every resume starts from the same
        weights."""
        cls.check_flow_data(data)
        method = dict(method_cfg)
        init_size = method.pop("init_size", 512)
        if method:
            raise ValueError(f"unknown method option(s) {', '.join(map(repr, method))} for family {cls.family!r}; "
                             "valid: init_size")
        init_size = int(check_positive(init_size, "method.init_size"))
        builder = FLOW_BUILDERS[cls.family]
        model = dict(model_cfg)
        check_kwargs(builder, model, f"model option for family {cls.family!r}", exclude=("shape",))
        levels = data.meta.get("levels")
        obj = cls(builder(tuple(data.shape), **model), data_shape=data.shape,
                  num_levels=None if levels is None else int(levels))
        needs_init = any(isinstance(m, ActNorm) for m in obj.modules())
        if needs_init and len(data.train):  # (a run loaded without its data gets its actnorm from its weights)
            idx = torch.randperm(len(data.train))[:init_size]
            obj.initialize(data.train[idx].float())
        return obj


class NICE(FlowModel):
    """NICE (Dinh et al. 2014): additive couplings and a diagonal scaling (:func:`unidm.nn.flows.nice_flow`)."""

    family = "nice"


class RealNVP(FlowModel):
    """RealNVP (Dinh et al. 2017): affine couplings, checkerboard and channel masks, multi-scale squeeze and factor
    out on images (:func:`unidm.nn.flows.realnvp_flow`)."""

    family = "realnvp"


class Glow(FlowModel):
    """Glow (Kingma & Dhariwal 2018): actnorm with data-dependent initialisation, invertible 1x1 convolutions in LU
    form, affine couplings, multi-scale on images (:func:`unidm.nn.flows.glow_flow`). The actnorm layers are set
    from ``method.init_size`` training examples when the model is built (:meth:`FlowModel.from_config`)."""

    family = "glow"


FLOW_FAMILIES: dict[str, type[FlowModel]] = {cls.family: cls for cls in (NICE, RealNVP, Glow)}
