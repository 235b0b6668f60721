"""Gaussian diffusion and flow models: process + parameterization + network + denoising loss.

DDPM, score SDEs (VE, VP, sub-VP), EDM and flow matching / rectified flow are all this one class with different
choices (see the table in ``docs/glossary.md``); sampling goes through :func:`unidm.samplers.sample`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..denoiser import Denoiser
from ..losses import COUPLINGS, DenoisingLoss
from ..parameterization import PARAMETERIZATIONS
from ..processes import NOISE_LEVELS, PROCESSES, VPDiscrete, build_process
from ..samplers import ALIASES, GRIDS, METHODS, check_sampler, make_grid, sample
from ..utils import as_options, check_choice, check_kwargs
from .base import DenoisingModel, SupportsLikelihood, TrainableModel, check_positive, pop_conditional

__all__ = ["GaussianDiffusion"]

#: options of the probability-flow ODE likelihood (:func:`unidm.likelihood.log_likelihood`)
ODE_OPTIONS = ["sigma_min", "sigma_max", "prior_variance", "hutchinson", "probe", "rtol", "atol"]
#: options of DDPM's ELBO (:func:`unidm.likelihood.elbo`) and of its K-step form with any reverse variance
#: (:func:`unidm.likelihood.kstep_elbo`: ``steps``, ``trajectory``, ``gamma``, ``eta``, ``data_range``)
ELBO_OPTIONS = ["variance", "num_terms", "steps", "trajectory", "gamma", "eta", "data_range"]


class GaussianDiffusion(DenoisingModel, SupportsLikelihood):
    """Any Gaussian diffusion or flow model as a :class:`DenoisingModel` with a likelihood.

    Args:
        net: noise-agnostic network ``net(c_in x, c_noise, class_labels=None)``.
        process: name in :data:`unidm.processes.PROCESSES` (``vp``, ``vp-discrete``, ``vp-cosine``, ``ve``,
            ``subvp``, ``edm``, ``flow``, ``pfgmpp``); ``process_options`` its init arguments. A process whose
            constructor takes ``data_dim`` receives ``prod(data_shape)``.
        parameterization: name in :data:`unidm.parameterization.PARAMETERIZATIONS`.
        noise_levels: name in :data:`unidm.processes.NOISE_LEVELS`; ``noise_options`` its arguments.
        weighting: name in :data:`unidm.losses.WEIGHTINGS`; ``gamma`` for min-SNR.
        sigma_data: data standard deviation (EDM preconditioning and weighting, and ``c_in`` for all).
        data_shape: the per-example data shape.
        num_classes: > 0 for a class-conditional model; ``label_dropout``: probability of training with the null
            label (classifier-free guidance, Ho & Salimans 2022, Algorithm 1).

    Sampling: every sampler of :data:`unidm.samplers.METHODS` on every grid of :data:`unidm.samplers.GRIDS`.
    Likelihood: ``"ode"``, the probability-flow ODE (Song et al. 2021, App. D.2); ``"elbo"``, DDPM's bound
    (Ho et al. 2020, eq. 5), for the ``vp-discrete`` process only.
    """

    family = "gaussian"
    samplers = METHODS
    sampler_aliases = ALIASES
    #: every grid of :data:`unidm.samplers.GRIDS`, and ``dp``: Analytic-DPM's ELBO-optimal trajectory over the
    #: process's levels, which needs ``grid_options={"gamma": GammaStats}`` (:func:`unidm.samplers.variance.dp_grid`);
    #: ``tuned``: a grid fitted to the model, ``grid_options={"tuned": TunedGrid}`` (:func:`unidm.run.load_tuned_grid`)
    grids = (*GRIDS, "dp", "tuned")
    default_sampling = {"sampler": "heun", "steps": 32, "grid": "karras"}
    sampler_seed_offset = 1_000_003
    sampler_internal = ("denoiser", "x", "grid", "generator", "callback", "cond")

    def __init__(
        self,
        net: nn.Module,
        process: str = "edm",
        parameterization: str = "edm",
        noise_levels: str = "lognormal",
        weighting: str = "edm",
        sigma_data: float = 0.5,
        gamma: float = 5.0,
        process_options: dict | None = None,
        noise_options: dict | None = None,
        data_shape: Sequence[int] = (2,),
        num_classes: int = 0,
        label_dropout: float = 0.0,
        coupling: str = "independent",
        coupling_reg: float = 0.05,
        fixed_pairs: bool = False,
    ):
        super().__init__(data_shape, num_classes)
        check_positive(sigma_data, "method.sigma_data")
        check_choice(coupling, COUPLINGS, "method.coupling")
        check_positive(coupling_reg, "method.coupling_reg")
        if fixed_pairs and coupling != "independent":
            raise ValueError(f"method.coupling={coupling!r} does not combine with fixed pairs (the stored pairs are "
                             "already a coupling); use method.coupling=independent")
        check_choice(process, PROCESSES, "process")
        check_choice(parameterization, PARAMETERIZATIONS, "parameterization")
        check_choice(noise_levels, NOISE_LEVELS, "noise_levels")
        process_options = as_options(process_options, "method.process_options")
        noise_options = as_options(noise_options, "method.noise_options")
        check_kwargs(PROCESSES[process], process_options, f"process_options for {process!r}", exclude=("data_dim",))
        check_kwargs(NOISE_LEVELS[noise_levels], noise_options, f"noise_options for {noise_levels!r}")
        self.process = build_process(process, process_options, data_dim=int(torch.tensor(self.data_shape).prod()))
        self.denoiser = Denoiser(net, self.process, PARAMETERIZATIONS[parameterization](sigma_data=sigma_data))
        self.loss_fn = DenoisingLoss(self.process, NOISE_LEVELS[noise_levels](**noise_options), weighting,
                                     sigma_data, gamma, coupling, coupling_reg)
        self.label_dropout = float(label_dropout)
        self.coupling, self.coupling_reg, self.fixed_pairs = coupling, float(coupling_reg), bool(fixed_pairs)
        if self.coupled:
            self._mark_coupled(process)

    @property
    def coupled(self) -> bool:
        """Whether training pairs data and noise other than independently (a coupling or fixed pairs)."""
        return self.coupling != "independent" or self.fixed_pairs

    def _mark_coupled(self, process_name: str) -> None:
        if not getattr(self.process, "gaussian_kernel", True):
            if self.coupling != "independent":
                raise ValueError(f"method.coupling={self.coupling!r} pairs data with Gaussian prior noise, but process "
                                 f"{process_name!r} has a non-Gaussian kernel; use method.coupling=independent")
            return
        why = f"coupling {self.coupling!r}" if self.coupling != "independent" else "fixed (noise, data) pairs"
        self.process.gaussian_kernel = False
        self.process.kernel_note = (f"belongs to a run trained with {why}: its D is E[x0 | x] under that coupling, "
                                    "not the posterior mean of the Gaussian corruption (no Tweedie score)")

    @property
    def net(self) -> nn.Module:
        return self.denoiser.net

    def forward(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        return self.denoiser(x, sigma, **cond)

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        cond = {}
        if self.num_classes > 0:
            cond["class_labels"] = self.drop_labels(batch["y"].long(), self.label_dropout, generator)
        noise = batch.get("noise")
        if (noise is not None) != self.fixed_pairs:
            raise ValueError("the batch carries fixed pairs ('noise') but the model was built with fixed_pairs=false"
                             if noise is not None else
                             "method.fixed_pairs=true but the batch carries no 'noise' (a dataset of stored pairs has it)")
        labels = batch.get("y")
        if self.coupling.endswith("-class") and labels is None:
            raise ValueError(f"method.coupling={self.coupling!r} couples within a class, but the batch has no "
                             "labels ('y')")
        return self.loss_fn(self.denoiser, batch["x"], generator, noise=noise, labels=labels, **cond)

    def check_sampling(self, sampler: str | None = None, steps: int | None = None, grid: str | None = None,
                       options: Mapping[str, Any] | None = None):
        plan = super().check_sampling(sampler, steps, grid, options)
        check_sampler(plan.sampler, self.process, **plan.options)
        if "variance" in plan.options:  # ddpm / ddim: Analytic-DPM's variance needs a Gaussian kernel
            from ..samplers.variance import check_variance

            check_variance(plan.options["variance"], self.process, plan.options.get("gamma"),
                           plan.options.get("head"))
        return plan

    @torch.no_grad()
    def generate(
        self,
        n: int,
        *,
        seeds: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        grid: str | None = None,
        shape: Sequence[int] | None = None,
        class_labels: Tensor | None = None,
        denoiser=None,
        grid_options: dict | None = None,
        **options,
    ) -> Tensor:
        """``n`` samples from the prior at ``sigma_max`` with ``sampler`` on a ``grid`` of ``steps`` steps (the
        family's defaults: Heun, 32 steps, Karras grid).

        With ``seeds`` (one per sample) each sample's initial noise and sampler noise depend only on its seed.
        ``denoiser`` replaces the model's own (e.g. a guided wrapper of it).
        """
        plan = self.check_sampling(sampler, steps, grid, options)
        device = self.device
        shape = tuple(shape or self.data_shape)
        g = self._grid(plan, grid_options or {})
        x = self.process.prior_sample((n, *shape), float(g[0]), seeds=seeds, generator=generator, device=device)
        cond = {}
        if class_labels is not None:
            cond["class_labels"] = torch.as_tensor(class_labels, device=device).long().expand(n)
        D = denoiser if denoiser is not None else self.denoiser
        with self.evaluating():
            return sample(D, x, g, method=plan.sampler, generator=self.sample_generators(seeds, generator), **cond,
                          **plan.options)

    def _grid(self, plan, grid_options: dict) -> Tensor:
        if plan.grid == "tuned":
            tuned = grid_options.get("tuned")
            if tuned is None:
                raise ValueError("grid 'tuned' needs a grid fitted to the model: "
                                 "grid_options={'tuned': unidm.run.load_tuned_grid(run, sampler, steps)}")
            g = torch.as_tensor(getattr(tuned, "sigmas", tuned), dtype=torch.float64)
            if len(g) != plan.steps + 1 or getattr(tuned, "sampler", plan.sampler) != plan.sampler:
                raise ValueError(f"the tuned grid is for {getattr(tuned, 'sampler', '?')} with {len(g) - 1} steps, "
                                 f"not {plan.sampler} with {plan.steps}")
            return g
        if plan.grid != "dp":
            return make_grid(plan.grid, plan.steps, self.process, **grid_options)
        from ..samplers.variance import dp_grid

        if grid_options.get("gamma") is None:
            raise ValueError("grid 'dp' (the ELBO-optimal trajectory) needs the Gamma statistics: "
                             "grid_options={'gamma': unidm.run.gamma_for_run(run)[0]}")
        return dp_grid(grid_options["gamma"], plan.steps, eta=float(plan.options.get("eta", 1.0)))

    def likelihood_methods(self) -> dict[str, str]:
        methods = {"ode": "ode"}
        if isinstance(self.process, VPDiscrete) and not self.coupled:
            methods["elbo"] = "bound"
        return methods

    @property
    def likelihood_note(self) -> str:
        if self.coupled:
            return "the ELBO needs the Gaussian corruption, and this run was trained with a coupling; "
        return "the ELBO needs the vp-discrete process; "

    def likelihood_options(self, method: str) -> list[str]:
        return ODE_OPTIONS if method == "ode" else ELBO_OPTIONS

    def likelihood(self, x: Tensor, *, method: str | None = None, num_levels: int | None = None,
                   generator: torch.Generator | None = None, class_labels: Tensor | None = None, **options):
        """Per-example NLL of ``x`` through the probability-flow ODE (``"ode"``, an exact density up to the solver
        tolerance) or DDPM's ELBO (``"elbo"``, a bound); for ``num_levels`` the discrete data's, dequantized.

        The ELBO over all ``T`` steps with ``variance`` ``beta`` (the default) or ``beta_tilde`` is
        :func:`unidm.likelihood.elbo`; with ``steps=K``, ``trajectory`` (``even``, ``quadratic``, ``dp``), ``eta``,
        or ``variance="analytic"`` (Analytic-DPM; needs ``gamma``, :func:`unidm.likelihood.gamma_statistics` over
        the training data) it is :func:`unidm.likelihood.kstep_elbo`."""
        from ..likelihood import elbo, kstep_elbo, log_likelihood
        from ..likelihood.variance import ELBO_STEP_OPTIONS

        method = self.check_likelihood(method, options)
        cond = {} if class_labels is None else {"class_labels": class_labels}
        estimate = elbo if method == "elbo" else log_likelihood
        if method == "elbo" and (any(k in options for k in ELBO_STEP_OPTIONS)
                                 or str(options.get("variance", "beta")).replace("-", "_") not in ("beta",
                                                                                                    "beta_tilde")):
            if "num_terms" in options:
                raise ValueError("num_terms (a stratified estimate of the full T-step sum) does not combine with "
                                 "steps, trajectory, eta, gamma or variance='analytic'")
            options = {"variance": "beta", **options}
            estimate = kstep_elbo
        elif method == "elbo" and "variance" in options:
            options = {**options, "variance": str(options["variance"]).replace("-", "_")}
        with self.evaluating():
            return estimate(self.denoiser, x, num_levels=num_levels, generator=generator, **options,
                            **cond).to_likelihood()

    @classmethod
    def from_config(cls, model_cfg: dict, method_cfg: dict, data,
                    frozen: Mapping[str, TrainableModel] | None = None) -> "GaussianDiffusion":
        """Build from a run config's ``model`` and ``method`` sections for dataset ``data``.

        ``method.sigma_data = "auto"`` (the default) takes the training data's standard deviation;
        ``method.conditional = true`` makes the model class-conditional on the data's labels.
        """
        from ..nn import build_network

        method = dict(method_cfg)
        num_classes = pop_conditional(method, data)
        if method.get("sigma_data", "auto") == "auto":
            method["sigma_data"] = round(data.std, 4)
        if "noise" in data.train_tensors():  # a stored coupling (z, x1): the batches carry the noise
            method.setdefault("fixed_pairs", True)
        coupling = method.get("coupling", "independent")
        if isinstance(coupling, str) and coupling.endswith("-class") and data.num_classes == 0:
            raise ValueError(f"method.coupling={coupling!r} couples within a class and needs labels, but dataset "
                             f"{data.name!r} has none; valid without labels: "
                             f"{', '.join(c for c in COUPLINGS if not c.endswith('-class'))}")
        check_kwargs(cls, method, "method option for family 'gaussian'", exclude=("net", "num_classes", "data_shape"))
        model = dict(model_cfg)
        arch = model.pop("arch", "mlp")
        derived = {"dim": int(torch.tensor(data.shape).prod()), "in_channels": data.shape[0],
                   "image_size": data.shape[-1], "num_classes": num_classes}
        net = build_network(arch, derived, **model)
        return cls(net, data_shape=data.shape, num_classes=num_classes, **method)

