"""The deletion forward process on variable-length sequences.

Each token of ``x0`` (length ``n``) survives to time ``t`` independently with probability ``alpha_t``, a schedule
from ``alpha_0 = 1`` (the data) to ``alpha_1 = 0`` (the empty sequence), and the survivors keep their order:
``x_t = F_t(x0, eps)`` is a subsequence of ``x0`` of length ``Binomial(n, alpha_t)``. This is the deletion
corruption of the unified diffusion model's ``x_t = F_t(x0, eps)`` frame; the schedules are the masking ones
(:data:`unidm.processes.absorbing.MASKING_SCHEDULES`: masking and deletion both keep a token with probability
``alpha_t``, one writes MASK where the other removes the position).

- One step ``q(x_t | x_s)``, ``s < t``: each token of ``x_s`` survives with probability ``alpha_t / alpha_s``
  (survival to ``t`` is survival to ``s`` and then from ``s`` to ``t``), so the steps compose to the marginal.
- The likelihood ``q(x_t | x0) = E(x_t, x0) alpha_t^m (1 - alpha_t)^(n - m)`` with ``m = |x_t|`` and
  ``E(x_t, x0)`` the number of embeddings of ``x_t`` in ``x0`` (position sets of ``x0`` that spell ``x_t``):
  :func:`deletion_log_prob`, :func:`count_embeddings`.
- The posterior: given ``x0`` and ``x_t``, the survivors are one of the ``E`` embeddings, each equally likely
  (each has the same probability), and a token deleted by ``t`` was still there at ``s < t`` with probability
  ``(alpha_s - alpha_t) / (1 - alpha_t)`` (:func:`reinsert_probability`; docs/deletion.md derives it).

Sequences are padded ``[B, L]`` long tensors (the pad id after the tokens) with lengths ``[B]``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ..rng import Generators, rand
from .absorbing import MASKING_SCHEDULES, MaskingSchedule, unmask_probability

__all__ = ["Deletion", "DELETION_SCHEDULES", "delete_tokens", "keep_tokens", "survival_ratio",
           "reinsert_probability", "count_embeddings", "deletion_log_prob", "is_subsequence"]

#: ``alpha_t`` schedules (survival probabilities), shared with the absorbing process
DELETION_SCHEDULES: dict[str, type[MaskingSchedule]] = MASKING_SCHEDULES


class Deletion(NamedTuple):
    """A draw of the deletion process: ``x [B, L]`` (survivors first, ``pad_id`` after), ``length [B]``, and
    ``keep [B, L]`` (which positions of the input survived)."""

    x: Tensor
    length: Tensor
    keep: Tensor


def keep_tokens(x: Tensor, keep: Tensor, pad_id: int) -> Deletion:
    """The tokens of ``x [B, L]`` where ``keep [B, L]`` is true, moved to the front in their order, ``pad_id`` after.

    Example:
        >>> d = keep_tokens(torch.tensor([[1, 2, 3]]), torch.tensor([[True, False, True]]), pad_id=9)
        >>> d.x.tolist(), d.length.tolist()
        ([[1, 3, 9]], [2])
    """
    order = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)
    moved = x.gather(-1, order)
    length = keep.sum(-1)
    inside = torch.arange(x.shape[-1], device=x.device) < length[:, None]
    return Deletion(torch.where(inside, moved, torch.full_like(moved, pad_id)), length, keep)


def delete_tokens(x: Tensor, length: Tensor, alpha: Tensor | float, pad_id: int,
                  generator: Generators = None) -> Deletion:
    """Draw ``x_t ~ q(x_t | x)``: each of the first ``length[i]`` tokens of row ``i`` survives independently with
    probability ``alpha`` (a number or ``[B]``), vectorised over the padded batch.

    ``generator``: one generator, or one per row (row ``i``'s survivals then depend on its generator alone). Each
    row uses ``L`` uniforms whatever its length.

    Example:
        >>> x, n = torch.tensor([[4, 5, 6], [7, 9, 9]]), torch.tensor([3, 1])
        >>> delete_tokens(x, n, torch.tensor([1.0, 0.0]), pad_id=9).x.tolist()
        [[4, 5, 6], [9, 9, 9]]
    """
    b, length_max = x.shape
    alpha = torch.as_tensor(alpha, dtype=torch.float64, device=x.device).reshape(-1, 1)
    u = rand((b, length_max), generator, dtype=torch.float64, device=x.device)
    inside = torch.arange(length_max, device=x.device) < length.reshape(-1, 1)
    return keep_tokens(x, inside & (u < alpha), pad_id)


def survival_ratio(alpha_s: Tensor | float, alpha_t: Tensor | float) -> Tensor:
    """``alpha_t / alpha_s``: the chance a token present at ``s`` survives to ``t > s`` (one step of the forward
    chain, ``q(x_t | x_s)`` = :func:`delete_tokens` with this survival); 0 where ``alpha_s = 0``.

    Example:
        >>> survival_ratio(0.5, 0.25).item()
        0.5
    """
    a_s = torch.as_tensor(alpha_s, dtype=torch.float64)
    a_t = torch.as_tensor(alpha_t, dtype=torch.float64)
    return torch.where(a_s > 0, a_t / a_s.clamp_min(1e-300), torch.zeros_like(a_t)).clamp(0.0, 1.0)


def reinsert_probability(alpha_s: Tensor | float, alpha_t: Tensor | float) -> Tensor:
    """``(alpha_s - alpha_t) / (1 - alpha_t)``: the chance a token of ``x0`` absent from ``x_t`` was still present
    at ``s < t`` (the same number as the absorbing process's unmasking probability).

    Example:
        >>> round(reinsert_probability(0.75, 0.5).item(), 6)
        0.5
    """
    return unmask_probability(torch.as_tensor(alpha_s, dtype=torch.float64),
                              torch.as_tensor(alpha_t, dtype=torch.float64))


def count_embeddings(sub: list[int], seq: list[int]) -> int:
    """The number of position sets ``i_1 < ... < i_m`` of ``seq`` with ``seq[i_k] = sub[k]`` (0: ``sub`` is not a
    subsequence of ``seq``); dynamic programming in ``O(|sub| |seq|)``.

    Example:
        >>> count_embeddings([0], [0, 1, 0]), count_embeddings([0, 0], [0, 0, 0]), count_embeddings([1, 0], [0, 1])
        (2, 3, 0)
    """
    ways = [1] + [0] * len(sub)  # ways[j]: embeddings of sub[:j] in the prefix of seq read so far
    for token in seq:
        for j in range(len(sub), 0, -1):
            if sub[j - 1] == token:
                ways[j] += ways[j - 1]
    return ways[len(sub)]


def is_subsequence(sub: list[int], seq: list[int]) -> bool:
    """Whether ``sub`` can be read off ``seq`` left to right (greedy matching decides it).

    Example:
        >>> is_subsequence([1, 3], [1, 2, 3]), is_subsequence([3, 1], [1, 2, 3])
        (True, False)
    """
    it = iter(seq)
    return all(any(token == s for s in it) for token in sub)


def deletion_log_prob(x_t: list[int], x0: list[int], alpha: float) -> float:
    """``log q(x_t | x0)`` in nats for survival probability ``alpha``:
    ``log E(x_t, x0) + m log alpha + (n - m) log(1 - alpha)``; ``-inf`` when ``x_t`` is not a subsequence of ``x0``.

    Example:
        >>> round(math.exp(deletion_log_prob([0], [0, 1, 0], 0.5)), 6)  # two embeddings of 1/8 each
        0.25
    """
    ways = count_embeddings(list(x_t), list(x0))
    m, n = len(x_t), len(x0)
    if ways == 0 or (m > 0 and alpha <= 0) or (m < n and alpha >= 1):
        return -math.inf
    return math.log(ways) + (m * math.log(alpha) if m else 0.0) + ((n - m) * math.log1p(-alpha) if n > m else 0.0)
