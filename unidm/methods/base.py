"""The faces every trainable family shows the trainer and the command line, and the plumbing they share.

A family is a class in :data:`unidm.methods.FAMILIES`. What it can do is stated by the classes it derives from,
never found out by probing attributes:

============================  ===========================================================================
face                          what it promises
============================  ===========================================================================
:class:`TrainableModel`       ``loss(batch, generator) -> [B]``; ``from_config``; ``data_shape``;
                              ``num_classes``; frozen sub-models; ``report(data)`` after training
:class:`GenerativeModel`      + ``generate(n, seeds=...)`` with the family's own samplers, grids, defaults
                              and option checks (:meth:`GenerativeModel.check_sampling`)
:class:`SupportsLikelihood`   + ``likelihood(x, method=...) -> Likelihood`` (nats, bits/dim, ``kind``:
                              ``exact`` | ``ode`` | ``bound``, NFE); ``likelihood_methods()``
:class:`DenoisingModel`       + ``denoiser`` ``D(x, sigma, **cond)`` and ``process``: guidance wrappers and
                              every sampler of :mod:`unidm.samplers` apply
:class:`DirectSampling`       + ``generate`` by one pass of ``sample(n, seeds=...)``; no steps, no grid
:class:`DensityModel`         + exact ``log_prob(x)`` and ``sample(n, seeds)``: one dequantization for all
============================  ===========================================================================
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..rng import Generators, rand, seed_generators
from ..utils import check_choice

__all__ = ["TrainableModel", "GenerativeModel", "SupportsLikelihood", "DenoisingModel", "DensityModel",
           "DirectSampling", "SamplingPlan", "check_option_values", "check_positive", "pop_conditional"]


def check_positive(value: Any, key: str) -> float:
    """``value`` as a float when it is a finite number > 0; else one line naming ``key``."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{key} must be a finite number > 0, got {value!r}")
    return float(value)


def pop_conditional(method: dict, data) -> int:
    """Take ``conditional`` (default false) out of a run config's ``method`` section: the number of classes the
    model conditions on, the dataset's or 0; ``conditional=true`` on a dataset without labels is refused.

    Example:
        >>> from types import SimpleNamespace
        >>> method = {"conditional": True, "schedule": "linear"}
        >>> pop_conditional(method, SimpleNamespace(name="digits", num_classes=10)), method
        (10, {'schedule': 'linear'})
        >>> pop_conditional({"conditional": True}, SimpleNamespace(name="moons", num_classes=0))
        Traceback (most recent call last):
        ...
        ValueError: method.conditional=true but dataset 'moons' has no labels
    """
    conditional = bool(method.pop("conditional", False))
    if conditional and data.num_classes == 0:
        raise ValueError(f"method.conditional=true but dataset {data.name!r} has no labels")
    return data.num_classes if conditional else 0


class TrainableModel(nn.Module):
    """A model the trainer can train: ``loss(batch, generator) -> [B]``.

    Args:
        data_shape: the per-example data shape (``(2,)``, ``(C, H, W)``, ``(L,)``).
        num_classes: > 0 for a class-conditional model (labels ``0 .. num_classes - 1``, the null label is
            ``num_classes``).

    **Batches** are dicts of per-example tensors of any names (``"x"``, ``"y"``, a reflow coupling's ``"z"``);
    the trainer shards them along the first axis and passes them through untouched.

    **Frozen sub-models** (a teacher for distillation, a frozen mean model under a variance head) are attached
    with :meth:`add_frozen`. They are not registered as sub-modules, so they are in neither ``parameters()`` nor
    ``state_dict()``: the optimizer, the EMA, DistributedDataParallel, the exported weights and the weight digest
    never see them. They follow ``.to(device)`` and stay in eval mode, without gradients. A family names the
    method keys that hold a frozen run's folder in :attr:`frozen_keys`; :func:`unidm.run.build_model` loads each
    such run and hands the models to :meth:`from_config` as ``frozen={key: model}``.
    """

    family: ClassVar[str] = "base"
    #: method-config keys whose value is the folder of a run to load as a frozen sub-model
    frozen_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, data_shape: Sequence[int] = (), num_classes: int = 0):
        super().__init__()
        self.data_shape: tuple[int, ...] = tuple(int(s) for s in data_shape)
        self.num_classes = int(num_classes)
        self.__dict__["_frozen"] = {}

    # --- the training face -----------------------------------------------------------------------------------
    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """Per-example training loss ``[B]`` of ``batch``; every random number from ``generator``."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, model_cfg: dict, method_cfg: dict, data,
                    frozen: Mapping[str, "TrainableModel"] | None = None) -> "TrainableModel":
        """Build from a run config's ``model`` and ``method`` sections for dataset ``data``."""
        raise NotImplementedError

    def report(self, data) -> str | None:
        """A line to print after training (e.g. a classifier's held-out accuracy); None for none."""
        return None

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype (float32 for a model without parameters)."""
        for t in self.parameters():
            return t.dtype
        return torch.float32

    # --- frozen sub-models -----------------------------------------------------------------------------------
    def add_frozen(self, name: str, module: nn.Module) -> None:
        """Attach ``module`` as a frozen sub-model reachable as ``self.<name>`` (see the class docstring)."""
        if name in self._modules or name in self._parameters or name in self._buffers:
            raise ValueError(f"{type(self).__name__} already has a sub-module or tensor named {name!r}")
        module.requires_grad_(False)
        module.eval()
        self._frozen[name] = module.to(self.device)

    @property
    def frozen(self) -> dict[str, nn.Module]:
        """The frozen sub-models by name."""
        return dict(self._frozen)

    def __getattr__(self, name: str) -> Any:
        frozen = self.__dict__.get("_frozen")
        if frozen is not None and name in frozen:
            return frozen[name]
        return super().__getattr__(name)

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        for module in self._frozen.values():
            module._apply(fn)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self._frozen.values():
            module.eval()
        return self

    # --- plumbing shared by the families ---------------------------------------------------------------------
    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode (no dropout, no label dropout) for the body of the ``with``; the previous mode after it."""
        was = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was)

    def drop_labels(self, y: Tensor, p: float, generator: Generators = None) -> Tensor:
        """Classifier-free guidance's label dropout (Ho & Salimans 2022, Algorithm 1): in training mode each label
        is replaced by the null label ``num_classes`` with probability ``p``; in eval mode labels pass unchanged."""
        if not self.training or p <= 0:
            return y
        drop = rand(y.shape, generator, dtype=torch.float32, device=y.device) < p
        return torch.where(drop, torch.full_like(y, self.num_classes), y)


@dataclass(frozen=True)
class SamplingPlan:
    """A checked choice of sampler, its step count, grid and options (:meth:`GenerativeModel.check_sampling`)."""

    sampler: str
    steps: int
    grid: str
    options: dict = field(default_factory=dict)


def check_option_values(fn: Callable, options: Mapping[str, Any], what: str, exclude: Sequence[str] = ()) -> None:
    """Refuse an option ``fn`` does not take, or a value whose type cannot be its default's (``s_churn=abc``),
    with one line naming the option, the value and what is allowed."""
    import inspect

    params = {p.name: p for p in inspect.signature(fn).parameters.values()
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in exclude}
    for key, value in options.items():
        if key not in params:
            raise ValueError(f"unknown option {key!r} for {what}; valid: {', '.join(params) or '(none)'}")
        default = params[key].default
        if default is inspect.Parameter.empty or default is None or value is None:
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, (int, float)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise ValueError(f"option {key}={value!r} for {what}: expected a {type(default).__name__} "
                             f"like its default {default!r}")


class GenerativeModel(TrainableModel):
    """A trainable model that draws samples: ``generate(n, seeds=..., sampler=, steps=, grid=, **options)``.

    A family declares its own samplers (``samplers``: name -> function whose keyword-only parameters are the
    sampler's options), their other names (``sampler_aliases``), its grids and its defaults
    (``default_sampling``); :meth:`check_sampling` turns the user's choice into a :class:`SamplingPlan` or one
    line saying what is allowed, before anything is drawn. With ``seeds`` (one per sample) sample ``i`` depends
    only on ``seeds[i]``, whatever the batch; :meth:`sample_generators` gives each seed its own generator on the
    family's stream ``sampler_seed_offset``.
    """

    samplers: ClassVar[Mapping[str, Callable]] = {}
    sampler_aliases: ClassVar[Mapping[str, str]] = {}
    grids: ClassVar[tuple[str, ...]] = ("uniform-t",)
    default_sampling: ClassVar[Mapping[str, Any]] = {"sampler": None, "steps": 64, "grid": "uniform-t"}
    #: the family's stream of per-sample sampler noise: seed ``s`` draws from ``s + sampler_seed_offset``
    sampler_seed_offset: ClassVar[int] = 0
    #: arguments of the sampler functions that are not user options
    sampler_internal: ClassVar[tuple[str, ...]] = ()

    @torch.no_grad()
    def generate(self, n: int, *, seeds: Sequence[int] | None = None, generator: torch.Generator | None = None,
                 sampler: str | None = None, steps: int | None = None, grid: str | None = None,
                 **options) -> Tensor:
        """``n`` samples ``[n, *data_shape]`` in data space.

        The default serves a family whose ``sample(n, seeds=, generator=, sampler=, steps=, grid=, **options)``
        returns a result with the samples in ``x`` (the token and deletion families: ``sample`` also reports the
        network evaluations); a family that draws otherwise overrides it."""
        return self.sample(n, seeds=seeds, generator=generator, sampler=sampler, steps=steps, grid=grid,
                           **options).x

    def resolve_sampler(self, name: str) -> str:
        """The canonical name of sampler ``name`` (an alias resolves), or one line listing the valid ones."""
        key = str(name).lower().replace("-", "_")
        key = self.sampler_aliases.get(key, key)
        if key not in self.samplers:
            raise ValueError(f"unknown sampler {name!r} for family {self.family!r}; valid: "
                             f"{', '.join(self.sampler_names())}")
        return key

    def sampler_names(self) -> list[str]:
        """Every name ``--sampler`` takes for this family (samplers, then aliases)."""
        return sorted(self.samplers) + sorted(set(self.sampler_aliases) - set(self.samplers))

    def check_sampling(self, sampler: str | None = None, steps: int | None = None, grid: str | None = None,
                       options: Mapping[str, Any] | None = None) -> SamplingPlan:
        """The family's defaults filled in and every choice checked: a known sampler (or alias), a positive whole
        number of steps, a known grid, and options the sampler takes with values of the right type."""
        d = self.default_sampling
        name = self.resolve_sampler(d["sampler"] if sampler is None else sampler)
        steps = d["steps"] if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a whole number >= 1, got {steps!r}")
        grid = d["grid"] if grid is None else grid
        check_choice(grid, self.grids, f"grid for family {self.family!r}")
        options = dict(options or {})
        check_option_values(self.samplers[name], options, f"sampler {name!r}", exclude=self.sampler_internal)
        return SamplingPlan(name, int(steps), grid, options)

    def sample_generators(self, seeds: Sequence[int] | None, generator: Generators = None) -> Generators:
        """One generator per seed on this family's stream, else ``generator`` (the whole batch's)."""
        return seed_generators(seeds, self.sampler_seed_offset) if seeds is not None else generator


class SupportsLikelihood:
    """A family that scores data: ``likelihood(x, method=...) -> Likelihood`` (:class:`unidm.likelihood.
    Likelihood`: per-example ``nll`` in nats and ``bits_per_dim``, ``kind`` ``exact`` | ``ode`` | ``bound``,
    ``nfe``). For data quantized to ``num_levels`` levels in [-1, 1] every family reports the discrete data's
    bits/dim through the same uniform dequantization, so the numbers of different families compare."""

    def likelihood_methods(self) -> dict[str, str]:
        """``{method: kind}``; the first is the default."""
        raise NotImplementedError

    def likelihood_options(self, method: str) -> list[str]:
        """The option names ``likelihood(x, method=method, **options)`` takes."""
        return []

    def check_likelihood(self, method: str | None, options: Mapping[str, Any]) -> str:
        """The method (default: the first) checked against :meth:`likelihood_methods`, and its options."""
        methods = self.likelihood_methods()
        family = getattr(self, "family", type(self).__name__)
        if not methods:
            raise ValueError(f"this {family!r} model has no likelihood ({getattr(self, 'likelihood_note', '')}"
                             "none applies to it)")
        method = next(iter(methods)) if method is None else method
        if method not in methods:
            raise ValueError(f"likelihood method {method!r} is not available for family {family!r} "
                             f"({getattr(self, 'likelihood_note', '')}valid: {', '.join(methods)})")
        valid = self.likelihood_options(method)
        bad = [k for k in options if k not in valid]
        if bad:
            raise ValueError(f"option(s) {', '.join(map(repr, bad))} do not apply to the {method!r} likelihood; "
                             f"valid: {', '.join(valid) or '(none)'}")
        return method

    def likelihood(self, x: Tensor, *, method: str | None = None, num_levels: int | None = None,
                   generator: torch.Generator | None = None, class_labels: Tensor | None = None, **options):
        raise NotImplementedError


class DenoisingModel(GenerativeModel):
    """A model sampled through a denoiser ``D(x, sigma, **cond) ~ E[x0 | x]`` in sigma-space (the one contract of
    :mod:`unidm.samplers`): ``denoiser`` and ``process`` are part of the face, so guidance wrappers
    (:mod:`unidm.guidance`) and autoguidance by a weaker model of the same face apply, and ``label_dropout``
    says whether the null label was trained (classifier-free guidance)."""

    #: set by the family: the denoiser ``D(x, sigma, **cond)`` and its forward process
    denoiser: nn.Module
    process: Any
    label_dropout: float = 0.0


class DirectSampling(GenerativeModel):
    """A family that draws a sample in one pass of its own ``sample(n, seeds=, generator=, **options) ->
    [n, *data_shape]`` (ancestral sampling of the autoregressive models and the VAE, the inverse of a flow).

    :meth:`generate` checks the choice (:meth:`~GenerativeModel.check_sampling`: the family's one sampler, its
    options) and draws in eval mode. There is no step count and no grid: ``steps`` (a whole number >= 1) and the
    grid are checked like every family's, so one command line serves all families, and then do not change the
    draw (``generate(n, seeds=s, steps=2)`` equals ``generate(n, seeds=s)``).

    Example:
        >>> from unidm.methods.vae import VAE
        >>> issubclass(VAE, DirectSampling), issubclass(DensityModel, DirectSampling)
        (True, True)
    """

    default_sampling: ClassVar[Mapping[str, Any]] = {"sampler": "ancestral", "steps": 1, "grid": "uniform-t"}

    def sample(self, n: int, *, seeds: Sequence[int] | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def generate(self, n: int, *, seeds: Sequence[int] | None = None, generator: torch.Generator | None = None,
                 sampler: str | None = None, steps: int | None = None, grid: str | None = None,
                 **options) -> Tensor:
        """``n`` samples ``[n, *data_shape]`` from :meth:`sample` with the sampler's options (``steps`` and the
        grid do not apply: class docstring)."""
        plan = self.check_sampling(sampler, steps, grid, options)
        with self.evaluating():
            return self.sample(n, seeds=seeds, generator=generator, **plan.options)


class DensityModel(DirectSampling, SupportsLikelihood):
    """An exact-likelihood family (autoregressive models, normalizing flows): ``log_prob(x) -> [B]`` nats and
    ``sample(n, seeds=...)`` (:class:`DirectSampling`). Its ``likelihood`` is ``log_prob`` of the dequantized data
    plus the bin volume (:func:`unidm.likelihood.dequantized_log_prob`), the same bound the diffusion ODE reports."""

    samplers: ClassVar[Mapping[str, Callable]] = {}

    def log_prob(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def likelihood_methods(self) -> dict[str, str]:
        return {"exact": "exact"}

    def likelihood(self, x: Tensor, *, method: str | None = None, num_levels: int | None = None,
                   generator: torch.Generator | None = None, class_labels: Tensor | None = None, **options):
        from ..likelihood import Likelihood, dequantized_log_prob

        self.check_likelihood(method, options)
        with self.evaluating():
            log_prob, bpd = dequantized_log_prob(self.log_prob, x, num_levels, generator=generator)
        return Likelihood(nll=-log_prob, bits_per_dim=bpd, kind="exact", nfe=1.0)
