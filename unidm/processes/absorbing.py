"""The absorbing (masking) discrete forward process and its schedules.

Each token of ``x0`` is kept with probability ``alpha_t`` and replaced by the MASK token with probability
``1 - alpha_t``, independently across positions (Austin et al. 2021, D3PM "absorbing state", Sec. 3.2 and App.
A.2.6; in continuous time Shi et al. 2024, MD4, eq. 1-2, and Sahoo et al. 2024, MDLM, eq. 2):

    q(x_t^i | x0^i) = Cat(alpha_t * onehot(x0^i) + (1 - alpha_t) * onehot(MASK)),

with ``alpha_0 = 1`` (data) decreasing to ``alpha_1 = 0`` (all masked). For ``s < t`` the reverse posterior of a
still-masked token is (MD4 eq. 3; MDLM eq. 6)

    q(x_s^i | x_t^i = MASK, x0) = (alpha_s - alpha_t) / (1 - alpha_t) * onehot(x0^i)
                                  + (1 - alpha_s) / (1 - alpha_t) * onehot(MASK),

and an unmasked token stays as it is. The continuous-time negative ELBO (MD4 eq. 4; MDLM eq. 10) is

    -log p(x0) <= int_0^1 (-alpha_t' / (1 - alpha_t)) E_{q(x_t|x0)} [ sum_{i: x_t^i = MASK} -log p(x0^i | x_t) ] dt,

which only depends on the schedule through its end points (change variables to ``alpha``; MD4 Sec. 4).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["MaskingSchedule", "LinearMasking", "CosineMasking", "LogLinearMasking", "PolynomialMasking",
           "MASKING_SCHEDULES", "mask_tokens", "unmask_probability", "elbo_weight"]


class MaskingSchedule:
    """``alpha_t``: the probability that a token is still unmasked at time ``t`` in [0, 1].

    Subclasses define :meth:`alpha` and :meth:`d_alpha` (its derivative in ``t``, <= 0).
    """

    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def weight(self, t: Tensor) -> Tensor:
        """The ELBO weight ``-alpha_t' / (1 - alpha_t)`` (MD4 eq. 4), >= 0."""
        return elbo_weight(self, t)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LinearMasking(MaskingSchedule):
    """``alpha_t = 1 - t`` (MD4 Table 1, "linear"; the weight is ``1 / t``)."""

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t

    def d_alpha(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t)


class CosineMasking(MaskingSchedule):
    """``alpha_t = 1 - cos(pi/2 (1 - t))`` (MD4 Table 1, "cosine"; MaskGIT's cosine mask ratio, Chang et al. 2022)."""

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - torch.cos(0.5 * math.pi * (1 - t))

    def d_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * (1 - t))


class LogLinearMasking(MaskingSchedule):
    """MDLM's "log-linear" schedule (Sahoo et al. 2024, Sec. 3.5.1): the total noise ``-log alpha_t =
    -log(1 - (1 - eps) t)`` grows log-linearly and stays finite at ``t = 1``, i.e. ``alpha_t = 1 - (1 - eps) t``.

    Its ELBO weight is ``1 / t`` as for the linear schedule, but ``t in [0, 1]`` covers only ``alpha in [eps, 1]``;
    the likelihood bound of :class:`unidm.methods.masked.MaskedDiffusion` integrates the full range whatever the
    training schedule.
    """

    def __init__(self, eps: float = 1e-3):
        self.eps = eps

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - (1 - self.eps) * t

    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -(1 - self.eps))

    def __repr__(self) -> str:
        return f"LogLinearMasking(eps={self.eps})"


class PolynomialMasking(MaskingSchedule):
    """``alpha_t = 1 - t^w`` (MD4 Table 1, "polynomial"); ``w = 1`` is linear."""

    def __init__(self, w: float = 2.0):
        self.w = w

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t ** self.w

    def d_alpha(self, t: Tensor) -> Tensor:
        return -self.w * t ** (self.w - 1)

    def __repr__(self) -> str:
        return f"PolynomialMasking(w={self.w})"


MASKING_SCHEDULES: dict[str, type[MaskingSchedule]] = {
    "linear": LinearMasking, "cosine": CosineMasking, "log-linear": LogLinearMasking, "polynomial": PolynomialMasking,
}


def elbo_weight(schedule: MaskingSchedule, t: Tensor) -> Tensor:
    """``-alpha_t' / (1 - alpha_t)``, the weight of the masked cross-entropy in the continuous-time ELBO."""
    return -schedule.d_alpha(t) / (1 - schedule.alpha(t)).clamp_min(1e-12)


def mask_tokens(x0: Tensor, alpha_t: Tensor, mask_id: int, generator: torch.Generator | None = None) -> Tensor:
    """Draw ``x_t ~ q(x_t | x0)``: each token independently replaced by ``mask_id`` with probability ``1 - alpha_t``.

    Args:
        x0: ``[B, L]`` long tokens; alpha_t: ``[B]`` (or broadcastable to ``x0``).
    Returns:
        ``x_t`` ``[B, L]``.

    Example:
        >>> x0 = torch.zeros(2, 4, dtype=torch.long)
        >>> mask_tokens(x0, torch.tensor([1.0, 0.0]), mask_id=9).tolist()
        [[0, 0, 0, 0], [9, 9, 9, 9]]
    """
    alpha = alpha_t.reshape(-1, *([1] * (x0.dim() - 1))) if alpha_t.dim() == 1 else alpha_t
    u = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=torch.float64)
    return torch.where(u < 1 - alpha.double(), torch.full_like(x0, mask_id), x0)


def unmask_probability(alpha_s: Tensor, alpha_t: Tensor) -> Tensor:
    """``(alpha_s - alpha_t) / (1 - alpha_t)``: the chance a token masked at ``t`` is revealed by ``s < t``
    (MD4 eq. 3)."""
    return ((alpha_s - alpha_t) / (1 - alpha_t).clamp_min(1e-12)).clamp(0.0, 1.0)
