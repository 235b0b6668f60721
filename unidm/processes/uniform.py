"""The uniform-replacement (multinomial) discrete forward process: its marginals, transitions and posterior.

Each token of ``x0`` (one of ``K`` classes) is kept with probability ``alpha_t`` and otherwise replaced by a token
drawn uniformly from all ``K`` classes (the replacement may redraw the same class), independently across positions
(Hoogeboom et al. 2021, "Argmax flows and multinomial diffusion", eq. 13; Austin et al. 2021, D3PM "uniform",
App. A.2.1):

    q(x_t | x0) = Cat(alpha_t onehot(x0) + (1 - alpha_t) / K).

The schedule ``alpha_t`` (``alpha_0 = 1`` at the data, ``alpha_1 ~ 0`` at the prior) is the same object as the
absorbing process's (:data:`unidm.processes.absorbing.MASKING_SCHEDULES`): the probability that a token is still
the original one at ``t``. On a discrete grid ``0 = t_0 < t_1 < ... < t_T = 1`` the one-step transition is D3PM's
``Q_k = (1 - beta_k) I + beta_k 11^T / K`` with ``1 - beta_k = alpha_{t_k} / alpha_{t_{k-1}}``; matrices of this
form compose by multiplying their keep probabilities, so the product of the one-step matrices is the marginal's.

For ``s < t`` the posterior (Bayes' rule, D3PM eq. 3; Hoogeboom et al. eq. 16) is

    q(x_s = k | x_t, x0) = q(x_t | x_s = k) q(x_s = k | x0) / q(x_t | x0)
                         = (a [k = x_t] + (1 - a) / K) (alpha_s [k = x0] + (1 - alpha_s) / K)
                           / (alpha_t [x_t = x0] + (1 - alpha_t) / K),     a = alpha_t / alpha_s,

and the x0-parameterised reverse step averages it over a distribution ``p(x0 | x_t)`` (:func:`reverse_probs`).
The prior is ``Cat(1 / K)``; ``KL(q(x_1 | x0) || Cat(1/K))`` is zero when ``alpha_1 = 0``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..rng import Generators, rand

__all__ = ["transition_matrix", "uniform_marginal", "replace_tokens", "posterior_probs", "reverse_probs",
           "prior_kl", "categorical_kl"]


def _check_k(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"uniform replacement needs a vocabulary of at least 2 classes, got {num_classes!r}")
    return num_classes


def _expand(alpha: Tensor | float, like: Tensor) -> Tensor:
    """``alpha`` (a number, ``[B]`` or broadcastable) as float64 broadcastable against ``like [B, ...]``."""
    a = torch.as_tensor(alpha, dtype=torch.float64, device=like.device)
    if a.dim() == 1 and like.dim() > 1:
        a = a.reshape(-1, *([1] * (like.dim() - 1)))
    return a


def transition_matrix(keep: float, num_classes: int) -> Tensor:
    """``Q = keep I + (1 - keep) 11^T / K`` ``[K, K]`` (float64): row ``j`` is ``q(x_t | x_s = j)`` for a step whose
    keep probability is ``keep = alpha_t / alpha_s`` (D3PM App. A.2.1, with ``beta = 1 - keep``).

    Example:
        >>> transition_matrix(0.5, 2).tolist()
        [[0.75, 0.25], [0.25, 0.75]]
    """
    k = _check_k(num_classes)
    return keep * torch.eye(k, dtype=torch.float64) + (1 - keep) / k


def uniform_marginal(x0: Tensor, alpha_t: Tensor | float, num_classes: int) -> Tensor:
    """``q(x_t | x0) = alpha_t onehot(x0) + (1 - alpha_t) / K`` ``[..., K]`` (float64) for tokens ``x0 [B, ...]``.

    Example:
        >>> uniform_marginal(torch.tensor([[0, 2]]), 0.4, 4).tolist()
        [[[0.55, 0.15, 0.15, 0.15], [0.15, 0.15, 0.55, 0.15]]]
    """
    k = _check_k(num_classes)
    a = _expand(alpha_t, x0)[..., None]
    onehot = torch.nn.functional.one_hot(x0.long(), k).double()
    return a * onehot + (1 - a) / k


def replace_tokens(x0: Tensor, alpha_t: Tensor | float, num_classes: int, generator: Generators = None) -> Tensor:
    """Draw ``x_t ~ q(x_t | x0)``: each token kept with probability ``alpha_t``, else a uniform draw of ``K`` classes.

    Args:
        x0: ``[B, L]`` long tokens in ``0 .. K-1``; alpha_t: a number, ``[B]`` or broadcastable to ``x0``.
        generator: one generator, or one per row (row ``i`` then depends only on generator ``i``).

    Example:
        >>> x0 = torch.zeros(2, 5, dtype=torch.long)
        >>> replace_tokens(x0, torch.tensor([1.0, 0.0]), 3, torch.Generator().manual_seed(0))[0].tolist()
        [0, 0, 0, 0, 0]
    """
    k = _check_k(num_classes)
    u = rand((x0.shape[0], 2, *x0.shape[1:]), generator, dtype=torch.float64, device=x0.device)
    keep = u[:, 0] < _expand(alpha_t, x0)
    drawn = (u[:, 1] * k).long().clamp_max(k - 1)
    return torch.where(keep, x0, drawn)


def reverse_probs(x_t: Tensor, p_x0: Tensor, alpha_s: Tensor | float, alpha_t: Tensor | float) -> Tensor:
    """The x0-parameterised reverse step ``p(x_s | x_t) = sum_x0 q(x_s | x_t, x0) p(x0 | x_t)`` ``[..., K]``.

    Args:
        x_t: ``[B, L]`` tokens at time ``t``; p_x0: ``[B, L, K]`` a distribution over ``x0`` at every position (a
            one-hot ``x0`` gives the posterior :func:`posterior_probs`); alpha_s >= alpha_t: numbers or ``[B]``.

    With ``a = alpha_t / alpha_s``, ``A_k = q(x_t | x_s = k) = a [k = x_t] + (1 - a)/K`` and
    ``w_j = p(x0 = j | x_t) / q(x_t | x0 = j)`` the sum over ``x0`` is
    ``p(x_s = k | x_t) = A_k (alpha_s w_k + (1 - alpha_s)/K sum_j w_j)``: O(K) per position, float64.

    Example:
        >>> p = reverse_probs(torch.tensor([[1]]), torch.tensor([[[0.5, 0.5, 0.0]]]), 1.0, 0.3)
        >>> [round(v, 6) for v in p[0, 0].tolist()]  # at alpha_s = 1 the step draws x0 itself
        [0.5, 0.5, 0.0]
    """
    k = p_x0.shape[-1]
    a_s = _expand(alpha_s, x_t)[..., None]
    a_t = _expand(alpha_t, x_t)[..., None]
    keep = torch.where(a_s > 0, a_t / a_s.clamp_min(1e-300), torch.zeros_like(a_t))
    onehot_t = torch.nn.functional.one_hot(x_t.long(), k).double()
    likelihood = a_t * onehot_t + (1 - a_t) / k  # q(x_t | x0 = j) over j
    w = torch.where(p_x0 > 0, p_x0.double() / likelihood.clamp_min(1e-300), torch.zeros_like(likelihood))
    forward = keep * onehot_t + (1 - keep) / k  # q(x_t | x_s = k) over k
    probs = forward * (a_s * w + (1 - a_s) / k * w.sum(-1, keepdim=True))
    return probs / probs.sum(-1, keepdim=True)


def posterior_probs(x_t: Tensor, x0: Tensor, alpha_s: Tensor | float, alpha_t: Tensor | float,
                    num_classes: int) -> Tensor:
    """The exact posterior ``q(x_s | x_t, x0)`` ``[..., K]`` (D3PM eq. 3) for tokens ``x_t, x0 [B, L]``.

    Example:
        >>> p = posterior_probs(torch.tensor([[0]]), torch.tensor([[1]]), 0.8, 0.4, 2)
        >>> [round(v, 6) for v in p[0, 0].tolist()]
        [0.25, 0.75]
    """
    k = _check_k(num_classes)
    return reverse_probs(x_t, torch.nn.functional.one_hot(x0.long(), k).double(), alpha_s, alpha_t)


def categorical_kl(q: Tensor, p: Tensor) -> Tensor:
    """``KL(q || p) = sum_k q_k (log q_k - log p_k)`` over the last axis (``0 log 0 = 0``)."""
    q, p = q.double(), p.double()
    return (torch.xlogy(q, q) - torch.xlogy(q, p)).sum(-1)


def prior_kl(x0: Tensor, alpha_1: Tensor | float, num_classes: int) -> Tensor:
    """``KL(q(x_1 | x0) || Cat(1/K))`` summed over the positions of ``x0 [B, L]``: ``[B]`` nats (the ELBO's prior
    term; the same for every token, ``(a + (1-a)/K) log(K a + 1 - a) + (K-1)(1-a)/K log(1 - a)``).

    Example:
        >>> prior_kl(torch.zeros(1, 3, dtype=torch.long), 0.0, 5).tolist()
        [0.0]
    """
    k = _check_k(num_classes)
    q = uniform_marginal(x0, alpha_1, k)
    return categorical_kl(q, torch.full_like(q, 1.0 / k)).reshape(x0.shape[0], -1).sum(-1)

