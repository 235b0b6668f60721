"""Reverse samplers of the deletion process: pure functions over a grid of ``alpha`` values from ``t = 1`` (the empty
sequence) to ``t = 0``.

Both follow the unified diffusion model's reverse step: draw ``x0_hat ~ p(x0 | x_t)`` from a predictor, then
``x_s ~ p(x_s | x_t, x0 = x0_hat)`` for the next grid time ``s < t``:

- :func:`sample_deletion_baseline`: ``p(x_s | x_t, x0) = q(x_s | x0)``, i.e. ``x_s = F_s(x0_hat)``: delete afresh
  from the prediction, each token kept with probability ``alpha_s`` (``x_t`` is forgotten).
- :func:`sample_deletion_nested`: the exact posterior ``q(x_s | x_t, x0_hat)``: keep ``x_t`` and re-insert each
  token of ``x0_hat`` that is not in it with probability ``(alpha_s - alpha_t) / (1 - alpha_t)``. That needs to know
  *which* tokens of ``x0_hat`` are ``x_t``'s: the predictor is asked for an ``x0_hat`` that holds ``x_t`` as a
  subsequence (constrained decoding, :meth:`unidm.methods.deletion.DeletionDiffusion.predict`), and the positions of
  ``x_t`` in it are drawn uniformly among all its embeddings (:func:`sample_embedding`, dynamic programming over
  embedding counts): given ``x0`` and ``x_t`` every embedding has the same probability
  ``alpha_t^m (1 - alpha_t)^(n - m)``, so the uniform draw is the exact posterior over which tokens survived.
  A leftmost (greedy) or longest-common-subsequence alignment would pick one embedding always and bias ``x_s`` when
  ``x_t`` embeds in several ways (``x0 = aba``, ``x_t = a``).

Randomness: ``generator`` is one generator or one per sequence; each step draws a fixed ``3 L + 1`` uniforms per
sequence whatever the others do, so a sequence's sample depends on its own generator only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import Tensor

from ..processes.deletion import keep_tokens, reinsert_probability
from ..rng import Generators, rand
from .token_sampling import check_alpha_grid

__all__ = ["Predict", "DeletionSample", "sample_embedding", "sample_deletion_nested", "sample_deletion_baseline",
           "DELETION_SAMPLERS"]


class Predict(Protocol):
    """``predict(x_t [b, L], length_t [b], alpha_t, u [b, L + 1], rows [b], constrain=, temperature=)
    -> (x0_hat [b, L], length [b])``: one draw of ``x0 ~ p(x0 | x_t)`` made from the uniforms ``u`` (row ``i``'s draw
    from ``u[i]`` alone); ``rows`` are the sequences' indices in the batch; with ``constrain`` the draw holds ``x_t``
    as a subsequence."""

    def __call__(self, x_t: Tensor, length_t: Tensor, alpha_t: float, u: Tensor, rows: Tensor, *,
                 constrain: bool, temperature: float) -> tuple[Tensor, Tensor]: ...


@dataclass
class DeletionSample:
    """Result of a deletion sampler: ``x [n, L]`` (tokens, then the pad id), ``length [n]``, ``nfe`` (predictor
    calls on the batch), ``steps``."""

    x: Tensor
    length: Tensor
    nfe: int
    steps: int


def sample_embedding(x_t: Tensor, length_t: Tensor, x0: Tensor, length0: Tensor, u: Tensor) -> Tensor:
    """Positions of ``x0 [b, L]`` that hold ``x_t [b, L]``, drawn uniformly among all embeddings: ``[b, L]`` bool.

    ``count[i, j]`` = number of embeddings of ``x_t[j:m]`` in ``x0[i:n]``; walking ``i = 0 .. n - 1`` with ``j``
    tokens of ``x_t`` placed, position ``i`` takes ``x_t[j]`` (when equal) with probability
    ``count[i + 1, j + 1] / count[i, j]``, decided by ``u[:, i]``. A row where ``x_t`` is not a subsequence of ``x0``
    is refused.

    Example:
        >>> e = sample_embedding(torch.tensor([[0, 9, 9]]), torch.tensor([1]), torch.tensor([[0, 1, 0]]),
        ...                      torch.tensor([3]), torch.tensor([[0.9, 0.0, 0.0]]))
        >>> e.tolist()  # u = 0.9 >= 1/2 skips the first 0: the survivor is the last one
        [[False, False, True]]
    """
    b, length_max = x0.shape
    pos = torch.arange(length_max + 1, device=x0.device)
    in_t = pos[None, :length_max] < length_t[:, None]
    done = (pos[None] >= length_t[:, None]).double()  # j >= m: the rest of x_t is empty, placed in one way
    ones = torch.ones(b, 1, dtype=torch.float64, device=x0.device)
    count = torch.zeros(b, length_max + 1, length_max + 1, dtype=torch.float64, device=x0.device)
    count[:, length_max] = done
    for i in range(length_max - 1, -1, -1):
        match = (x0[:, i, None] == x_t) & in_t
        step = count[:, i + 1, :length_max] + match * count[:, i + 1, 1:]
        here = torch.cat([torch.where(in_t, step, torch.ones_like(step)), ones], dim=1)
        count[:, i] = torch.where((i < length0)[:, None], here, done)
    if bool((count[:, 0, 0] == 0).any()):
        raise ValueError("the prediction does not hold x_t as a subsequence; the nested step needs constrained "
                         "decoding")
    rows = torch.arange(b, device=x0.device)
    j = torch.zeros(b, dtype=torch.long, device=x0.device)
    taken = torch.zeros(b, length_max, dtype=torch.bool, device=x0.device)
    for i in range(length_max):
        jj = j.clamp_max(length_max - 1)
        can = (i < length0) & (j < length_t) & (x0[:, i] == x_t[rows, jj])
        p = count[rows, i + 1, jj + 1] / count[rows, i, jj].clamp_min(1e-300)
        take = can & (u[:, i].double() < p)
        taken[:, i] = take
        j = j + take.long()
    return taken


def _walk(predict: Predict, x: Tensor, length: Tensor, alphas: Tensor, pad_id: int, generator: Generators,
          constrain: bool, temperature: float, step: Callable, callback) -> DeletionSample:
    check_alpha_grid(alphas)
    alphas = alphas.double()
    n, length_max = x.shape
    rows = torch.arange(n, device=x.device)
    for k in range(len(alphas) - 1):
        a_t, a_s = float(alphas[k]), float(alphas[k + 1])
        u = rand((n, 3 * length_max + 1), generator, dtype=torch.float64, device=x.device)
        x0, n0 = predict(x, length, a_t, u[:, : length_max + 1], rows, constrain=constrain, temperature=temperature)
        x, length = step(x, length, x0, n0, a_t, a_s, u[:, length_max + 1 :])
        if callback is not None:
            callback(k, x)
    return DeletionSample(x, length, len(alphas) - 1, len(alphas) - 1)


def sample_deletion_nested(predict: Predict, x: Tensor, length: Tensor, alphas: Tensor, pad_id: int, *,
                           generator: Generators = None, temperature: float = 1.0,
                           callback: Callable[[int, Tensor], None] | None = None) -> DeletionSample:
    """The nested reverse step: keep ``x_t``, re-insert each other token of ``x0_hat`` with probability
    ``(alpha_s - alpha_t) / (1 - alpha_t)`` (the posterior ``q(x_s | x_t, x0)``, docs/deletion.md).

    Args:
        predict: :class:`Predict`; called with ``constrain=True``.
        x, length: ``[n, L]`` start sequences (all ``pad_id`` for ``t = 1``) and their lengths ``[n]``.
        alphas: ``[K + 1]`` values of ``alpha`` along ``1 = t_0 > ... > t_K = 0``; the last should be 1.
        temperature: of the predictor's categorical draws.
        callback: ``callback(k, x)`` after step ``k``.
    """
    def step(x, length, x0, n0, a_t, a_s, u):
        length_max = x.shape[1]
        survivors = sample_embedding(x, length, x0, n0, u[:, :length_max])
        inside = torch.arange(length_max, device=x.device) < n0[:, None]
        back = inside & ~survivors & (u[:, length_max:] < float(reinsert_probability(a_s, a_t)))
        out = keep_tokens(x0, survivors | back, pad_id)
        return out.x, out.length

    return _walk(predict, x, length, alphas, pad_id, generator, True, temperature, step, callback)


def sample_deletion_baseline(predict: Predict, x: Tensor, length: Tensor, alphas: Tensor, pad_id: int, *,
                             generator: Generators = None, temperature: float = 1.0, constrained: bool = False,
                             callback: Callable[[int, Tensor], None] | None = None) -> DeletionSample:
    """The baseline reverse step ``x_s = F_s(x0_hat)``: delete afresh from the prediction, each token kept with
    probability ``alpha_s`` (the unified diffusion model's default ``p(x_s | x_t, x0) = q(x_s | x0)``).

    ``constrained``: ask the predictor for an ``x0_hat`` holding ``x_t`` (off by default: the baseline does not
    need it). Other arguments as :func:`sample_deletion_nested`.
    """
    def step(x, length, x0, n0, a_t, a_s, u):
        rows_u = u[:, x.shape[1]:]
        keep = (torch.arange(x.shape[1], device=x.device) < n0[:, None]) & (rows_u < a_s)
        out = keep_tokens(x0, keep, pad_id)
        return out.x, out.length

    return _walk(predict, x, length, alphas, pad_id, generator, constrained, temperature, step, callback)


#: sampler name -> ``(predict, x, length, alphas, pad_id, *, generator, **options) -> DeletionSample``
DELETION_SAMPLERS: dict[str, Callable[..., DeletionSample]] = {
    "nested": sample_deletion_nested,
    "baseline": sample_deletion_baseline,
}
