"""A k-step student distilled from a flow on its coupling (Liu et al. 2022, "Flow Straight and Fast", Sec. 2.3).

The teacher's ODE maps prior noise ``z`` to ``x1`` (a stored coupling, :mod:`unidm.data.pairs`, or drawn on the
fly). The student is the teacher's own network, initialised from the teacher's weights, trained so that ``k``
Euler steps of its ODE map ``z`` to ``x1``:

    ``L = E || Euler_k(v_student; sigma_max z) - x1 ||^2  (+ w ||phi(Euler_k(...)) - phi(x1)||^2)``

the regression of Liu et al.'s eq. 7 (``k = 1``: ``|| z + v(z, 0) - x1 ||^2`` in their time convention), with the
``k`` Euler steps unrolled and differentiated, and optionally a distance in a frozen feature network's space ``phi``
(the project's offline stand-in for LPIPS; attached as the frozen sub-model ``features``). Sampling is Euler with
``k`` equal steps in ``t`` from ``t_max`` to 0 (grid ``uniform-t`` of this family), what the student was trained
for.

The student's ``D`` is no posterior mean of a Gaussian corruption: samplers that use Tweedie's formula (ancestral,
SDE, churn) are refused, and so is a likelihood (the k-step map has none that its ODE would give).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from ..rng import randn
from ..samplers import GAUSSIAN_ONLY, GAUSSIAN_WHEN, METHODS, make_grid
from .base import TrainableModel, check_positive
from .gaussian import GaussianDiffusion

__all__ = ["DistilledFlow", "DISTILL_FAMILIES", "euler_grid"]


def euler_grid(process, steps: int) -> Tensor:
    """``steps`` equal steps in the process's time from ``t_max`` to 0, in sigma-space (the ``uniform-t`` grid with
    ``t_min = t_max / steps``; one step is ``[sigma_max, 0]``).

    >>> from unidm.processes import build_process
    >>> [round(s, 4) for s in euler_grid(build_process("flow", {}), 2).tolist()]  # t = 0.999, 0.4995, 0
    [999.0, 0.998, 0.0]
    """
    return make_grid("uniform-t", steps, process, t_min=process.t_max_sampling / steps)


class DistilledFlow(GaussianDiffusion):
    """A :class:`GaussianDiffusion` whose loss is the k-step distillation loss above (see the module docstring).

    Method options beyond the Gaussian family's: ``steps`` (k, >= 1), ``feature_weight`` (w >= 0; needs the frozen
    sub-model ``features``), ``teacher`` (the folder of the teacher run, a frozen sub-model: its weights initialise
    the student; without stored pairs in the batch it draws the pairs on the fly with ``teacher_sampler`` /
    ``teacher_steps``).
    """

    family = "distill"
    frozen_keys = ("teacher",)
    grids = ("uniform-t",)
    default_sampling = {"sampler": "euler", "steps": 1, "grid": "uniform-t"}
    likelihood_note = "a k-step distilled student's map has no ODE density; "

    def configure(self, steps: int = 1, feature_weight: float = 0.0, teacher_sampler: str = "heun",
                  teacher_steps: int = 16) -> "DistilledFlow":
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"method.steps (the student's Euler steps) must be a whole number >= 1, got {steps!r}")
        if feature_weight != 0:
            check_positive(feature_weight, "method.feature_weight")
        if teacher_sampler not in METHODS or teacher_sampler in GAUSSIAN_ONLY:
            raise ValueError(f"method.teacher_sampler must be a deterministic sampler, got {teacher_sampler!r}")
        self.steps, self.feature_weight = int(steps), float(feature_weight)
        self.teacher_sampler, self.teacher_steps = teacher_sampler, int(teacher_steps)
        return self

    def _grid(self, plan, grid_options: dict) -> Tensor:
        return euler_grid(self.process, plan.steps)

    def check_sampling(self, sampler: str | None = None, steps: int | None = None, grid: str | None = None,
                       options: Mapping[str, Any] | None = None):
        plan = super().check_sampling(sampler, steps, grid, options)
        if plan.sampler in GAUSSIAN_ONLY or plan.options.get(GAUSSIAN_WHEN.get(plan.sampler, ""), 0):
            raise ValueError(f"sampler {plan.sampler!r} with these options uses Tweedie's formula, which a distilled "
                             "student's D does not satisfy; use a deterministic sampler (euler, the default)")
        return plan

    def likelihood_methods(self) -> dict[str, str]:
        return {}

    def _cond(self, batch: dict[str, Tensor], generator) -> dict:
        if self.num_classes == 0:
            return {}
        return {"class_labels": self.drop_labels(batch["y"].long(), self.label_dropout, generator)}

    def _pairs(self, batch: dict[str, Tensor], cond: dict, generator) -> tuple[Tensor, Tensor]:
        """The batch's stored pairs ``(noise, x)``, else fresh noise and the teacher's ODE end."""
        if "noise" in batch:
            return batch["noise"], batch["x"]
        x = batch["x"]
        z = randn(x.shape, generator, dtype=x.dtype, device=x.device)
        teacher = self.frozen["teacher"]
        grid = euler_grid(teacher.process, self.teacher_steps)
        with torch.no_grad():
            x1 = METHODS[self.teacher_sampler](teacher.denoiser, z * float(grid[0]), grid.to(x.dtype), cond=cond)
        return z, x1

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        cond = self._cond(batch, generator)
        z, x1 = self._pairs(batch, cond, generator)
        grid = euler_grid(self.process, self.steps).to(z.dtype)
        out = METHODS["euler"](self.denoiser, z * float(grid[0]), grid, cond=cond)
        err = (out - x1).pow(2).reshape(len(z), -1).mean(1)
        if self.feature_weight > 0:
            phi = self.frozen.get("features")
            if phi is None:
                raise ValueError("method.feature_weight > 0 needs the frozen feature network (attached by "
                                 "`unidm distill --feature-weight W`)")
            err = err + self.feature_weight * (phi.features(out) - phi.features(x1)).pow(2).mean(1)
        return err

    @classmethod
    def from_config(cls, model_cfg: dict, method_cfg: dict, data,
                    frozen: Mapping[str, TrainableModel] | None = None) -> "DistilledFlow":
        """The teacher's network and method (``method`` without this family's keys), initialised from the
        teacher's weights (``frozen["teacher"]``, a :class:`GaussianDiffusion` of the same config)."""
        method = dict(method_cfg)
        own = {k: method.pop(k) for k in ("steps", "feature_weight", "teacher_sampler", "teacher_steps")
               if k in method}
        try:
            model = super().from_config(model_cfg, method, data).configure(**own)
        except ValueError as e:  # name this family and its own keys in the gaussian family's unknown-key message
            text = str(e)
            if text.startswith("unknown method option for family 'gaussian'"):
                text = text.replace("family 'gaussian'", "family 'distill'") + (
                    ", steps, feature_weight, teacher_sampler, teacher_steps, teacher")
            raise ValueError(text) from None
        teacher = (frozen or {}).get("teacher")
        if not isinstance(teacher, GaussianDiffusion) or isinstance(teacher, DistilledFlow):
            raise ValueError("family 'distill' needs method.teacher, the folder of a trained diffusion or flow run")
        try:
            model.load_state_dict(teacher.state_dict())
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1].strip()
            raise ValueError(f"the teacher's weights do not fit the student (same model and method needed): "
                             f"{first}") from None
        model.add_frozen("teacher", teacher)
        return model


DISTILL_FAMILIES: dict[str, type[TrainableModel]] = {"distill": DistilledFlow}
