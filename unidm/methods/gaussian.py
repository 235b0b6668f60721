"""Gaussian diffusion and flow models: process + parameterization + network + denoising loss.

DDPM, score SDEs (VE, VP, sub-VP), EDM and flow matching / rectified flow are all this one class with different
choices (see the table in ``docs/glossary.md``); sampling goes through :func:`unidm.samplers.sample`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..denoiser import Denoiser
from ..losses import DenoisingLoss
from ..parameterization import PARAMETERIZATIONS
from ..processes import NOISE_LEVELS, PROCESSES
from ..samplers import make_grid, prior_noise, sample
from ..utils import as_options, check_choice, check_kwargs
from .base import GenerativeModel

__all__ = ["GaussianDiffusion"]


class GaussianDiffusion(GenerativeModel):
    """Any Gaussian diffusion or flow model as a :class:`GenerativeModel`.

    Args:
        net: noise-agnostic network ``net(c_in x, c_noise, class_labels=None)``.
        process: name in :data:`unidm.processes.PROCESSES` (``vp``, ``vp-discrete``, ``vp-cosine``, ``ve``,
            ``subvp``, ``edm``, ``flow``); ``process_options`` its init arguments.
        parameterization: name in :data:`unidm.parameterization.PARAMETERIZATIONS`.
        noise_levels: name in :data:`unidm.processes.NOISE_LEVELS`; ``noise_options`` its arguments.
        weighting: name in :data:`unidm.losses.WEIGHTINGS`; ``gamma`` for min-SNR.
        sigma_data: data standard deviation (EDM preconditioning and weighting, and ``c_in`` for all).
        num_classes: > 0 for a class-conditional model; ``label_dropout``: probability of training with the null
            label (classifier-free guidance, Ho & Salimans 2022, Algorithm 1).
    """

    family = "gaussian"

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
        num_classes: int = 0,
        label_dropout: float = 0.0,
    ):
        super().__init__()
        check_choice(process, PROCESSES, "process")
        check_choice(parameterization, PARAMETERIZATIONS, "parameterization")
        check_choice(noise_levels, NOISE_LEVELS, "noise_levels")
        process_options = as_options(process_options, "method.process_options")
        noise_options = as_options(noise_options, "method.noise_options")
        check_kwargs(PROCESSES[process], process_options, f"process_options for {process!r}")
        check_kwargs(NOISE_LEVELS[noise_levels], noise_options, f"noise_options for {noise_levels!r}")
        self.process = PROCESSES[process](**process_options)
        self.denoiser = Denoiser(net, self.process, PARAMETERIZATIONS[parameterization](sigma_data=sigma_data))
        self.loss_fn = DenoisingLoss(self.process, NOISE_LEVELS[noise_levels](**noise_options), weighting,
                                     sigma_data, gamma)
        self.num_classes, self.label_dropout = num_classes, label_dropout

    @property
    def net(self) -> nn.Module:
        return self.denoiser.net

    def forward(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        return self.denoiser(x, sigma, **cond)

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        x0 = batch["x"]
        cond = {}
        if self.num_classes > 0:
            y = batch["y"].long()
            if self.label_dropout > 0:
                drop = torch.rand(y.shape, generator=generator, device=y.device) < self.label_dropout
                y = torch.where(drop, torch.full_like(y, self.num_classes), y)
            cond["class_labels"] = y
        return self.loss_fn(self.denoiser, x0, generator, **cond)

    @torch.no_grad()
    def generate(
        self,
        n: int,
        *,
        seeds: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        sampler: str = "heun",
        steps: int = 32,
        grid: str = "karras",
        shape: Sequence[int] | None = None,
        class_labels: Tensor | None = None,
        denoiser=None,
        grid_options: dict | None = None,
        **options,
    ) -> Tensor:
        """``n`` samples from noise at ``sigma_max`` with ``sampler`` on a ``grid`` of ``steps`` steps.

        With ``seeds`` (one per sample) each sample's initial noise and sampler noise depend only on its seed.
        ``denoiser`` replaces the model's own (e.g. a guided wrapper of it).
        """
        device = self.device
        shape = tuple(shape or self.data_shape)
        g = make_grid(grid, steps, self.process, **(grid_options or {}))
        x = prior_noise((n, *shape), float(g[0]), seeds=seeds, generator=generator, device=device)
        gens = None
        if seeds is not None:
            gens = [torch.Generator().manual_seed(int(s) + 1_000_003) for s in seeds]
        elif generator is not None:
            gens = generator
        cond = {}
        if class_labels is not None:
            cond["class_labels"] = torch.as_tensor(class_labels, device=device).long().expand(n)
        D = denoiser if denoiser is not None else self.denoiser
        was_training = self.training
        self.eval()
        try:
            out = sample(D, x, g, method=sampler, generator=gens, **cond, **options)
        finally:
            self.train(was_training)
        return out

    #: set by the builder: the per-example data shape
    data_shape: tuple[int, ...] = (2,)

    @classmethod
    def from_config(cls, model_cfg: dict, method_cfg: dict, data) -> "GaussianDiffusion":
        """Build from a run config's ``model`` and ``method`` sections for dataset ``data``.

        ``method.sigma_data = "auto"`` (the default) takes the training data's standard deviation;
        ``method.conditional = true`` makes the model class-conditional on the data's labels.
        """
        from ..nn import build_network

        method = dict(method_cfg)
        conditional = bool(method.pop("conditional", False))
        if conditional and data.num_classes == 0:
            raise ValueError(f"method.conditional=true but dataset {data.name!r} has no labels")
        if method.get("sigma_data", "auto") == "auto":
            method["sigma_data"] = round(data.std, 4)
        check_kwargs(cls, method, "method option for family 'gaussian'", exclude=("net", "num_classes"))
        model = dict(model_cfg)
        arch = model.pop("arch", "mlp")
        derived = {"dim": int(torch.tensor(data.shape).prod()), "in_channels": data.shape[0],
                   "image_size": data.shape[-1], "num_classes": data.num_classes if conditional else 0}
        net = build_network(arch, derived, **model)
        obj = cls(net, num_classes=data.num_classes if conditional else 0, **method)
        obj.data_shape = tuple(data.shape)
        return obj
