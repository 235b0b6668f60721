"""Samplers for masked (absorbing) diffusion: pure functions over a precomputed grid of ``alpha`` values.

Both walk from all-MASK (``t = 1``) to data (``t = 0``) by predicting ``x0`` with the model's categorical
``p(x0 | x_t)`` and corrupting it again to the next level, keeping what is already revealed:

- :func:`sample_masked_ancestral` draws the exact reverse posterior: a masked token is revealed between ``t`` and
  ``s < t`` with probability ``(alpha_s - alpha_t) / (1 - alpha_t)`` and its value drawn from ``p(x0^i | x_t)``
  (Austin et al. 2021; Shi et al. 2024, MD4 Algorithm 2; Sahoo et al. 2024, MDLM Sec. 3.5).
- :func:`sample_masked_greedy` reveals, at each step, the expected number of tokens, choosing the ones whose drawn
  value is most probable (MaskGIT's confidence decoding, Chang et al. 2022, Sec. 3.2).

The denoiser ``p(x0 | x_t)`` of an absorbing process depends on ``x_t`` only, not on ``t`` (the posterior of a
masked token does not involve the schedule; Ou et al. 2024), so its output is cached per sequence and the network is
called again only for sequences in which some token changed: with many steps most steps reveal nothing and cost no
network evaluation (MDLM Sec. 3.5, "caching"). The :class:`~unidm.methods.token_sampling.TokenSample` they return
reports the count.

Randomness: ``generator`` is one ``torch.Generator`` or a list with one per sequence; with a list each sequence's
draws come from its own generator only, so a sample does not depend on the batch it was drawn in.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from ..processes.absorbing import unmask_probability
from .token_sampling import TokenSample, categorical, check_alpha_grid, temper

__all__ = ["MaskedSample", "sample_masked_ancestral", "sample_masked_greedy", "MASKED_SAMPLERS"]

#: ``denoise(x_t [b, L], rows [b]) -> probabilities of x0 [b, L, V]``: ``rows`` are the indices of these sequences
#: in the batch (to pick their conditioning); unmasked positions of the output are ignored
Denoise = Callable[[Tensor, Tensor], Tensor]

#: the result of a masked sampler: :class:`unidm.methods.token_sampling.TokenSample` (the name kept for callers)
MaskedSample = TokenSample


def _uniform(shape: tuple[int, ...], generator, device) -> Tensor:
    """``U(0, 1)`` of ``shape = (n, ...)``; row ``i`` from ``generator[i]`` when a list is given."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for {shape[0]} sequences")
        return torch.stack([torch.rand(shape[1:], generator=g, dtype=torch.float64) for g in generator]).to(device)
    return torch.rand(shape, generator=generator, dtype=torch.float64).to(device)


class _CachedDenoiser:
    """Calls ``denoise`` only on the rows flagged as changed since their last evaluation."""

    def __init__(self, denoise: Denoise, n: int):
        self.denoise, self.probs = denoise, None
        self.nfe, self.row_evals = 0, 0
        self.stale = None
        self.n = n

    def __call__(self, x: Tensor, cache: bool) -> Tensor:
        if self.probs is None or not cache:
            rows = torch.arange(self.n, device=x.device)
        else:
            rows = self.stale.nonzero().squeeze(-1)
        if len(rows):
            out = self.denoise(x[rows], rows)
            if self.probs is None:
                self.probs = out.new_zeros((self.n, *out.shape[1:]))
            self.probs[rows] = out
            self.nfe += 1
            self.row_evals += len(rows)
        return self.probs


#: ``step(k, x, masked, probs) -> (reveal [n, L] bool, value [n, L])``: one step of a masked sampler
Step = Callable[[int, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def _reveal_walk(denoise: Denoise, x: Tensor, alphas: Tensor, mask_id: int, step: Step, cache: bool,
                 callback: Callable[[int, Tensor], None] | None) -> TokenSample:
    """The walk both masked samplers share: at step ``k`` the (cached) ``p(x0 | x_t)`` of every row goes to
    ``step``, which says which masked positions to reveal and with what value; stops once nothing is masked."""
    x = x.clone()
    n = x.shape[0]
    den = _CachedDenoiser(denoise, n)
    stale = torch.ones(n, dtype=torch.bool, device=x.device)
    steps = len(alphas) - 1
    for k in range(steps):
        masked = x == mask_id
        if not bool(masked.any()):
            break
        den.stale = stale
        reveal, value = step(k, x, masked, den(x, cache))
        x = torch.where(reveal, value, x)
        stale = reveal.any(-1) & (x == mask_id).any(-1)
        if callback is not None:
            callback(k, x)
    return TokenSample(x, den.nfe, den.row_evals / max(n, 1), steps)


def sample_masked_ancestral(
    denoise: Denoise,
    x: Tensor,
    alphas: Tensor,
    mask_id: int,
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    temperature: float = 1.0,
    cache: bool = True,
    callback: Callable[[int, Tensor], None] | None = None,
) -> TokenSample:
    """Ancestral sampling of an absorbing diffusion (MD4 Algorithm 2).

    Args:
        denoise: ``(x_t [b, L], rows [b]) -> p(x0 | x_t) [b, L, V]``.
        x: ``[n, L]`` starting tokens (all ``mask_id`` for unconditional generation; tokens already given stay).
        alphas: ``[K + 1]`` values ``alpha_{t_0} <= ... <= alpha_{t_K}`` along the grid ``1 = t_0 > ... > t_K = 0``;
            the last value should be 1 so that every token is revealed.
        temperature: divides the log-probabilities of the categorical (1: the model's own).
        cache: reuse the network output of sequences in which nothing changed.
        callback: ``callback(k, x)`` after step ``k``.

    Example:
        >>> probs = torch.tensor([[[0.0, 1.0]]])  # p(x0 | x_t): always token 1
        >>> out = sample_masked_ancestral(lambda x, rows: probs.expand(len(x), 3, 2), torch.full((2, 3), 2),
        ...                               torch.tensor([0.0, 0.5, 1.0]), 2, generator=torch.Generator().manual_seed(0))
        >>> out.x.tolist()
        [[1, 1, 1], [1, 1, 1]]
    """
    check_alpha_grid(alphas)
    alphas = alphas.double()
    n, length = x.shape

    def step(k: int, x: Tensor, masked: Tensor, probs: Tensor) -> tuple[Tensor, Tensor]:
        probs = temper(probs, temperature)
        p_reveal = unmask_probability(alphas[k + 1], alphas[k])
        u = _uniform((n, 2, length), generator, x.device)
        return masked & (u[:, 0] < p_reveal), categorical(probs, u[:, 1])

    return _reveal_walk(denoise, x, alphas, mask_id, step, cache, callback)


def sample_masked_greedy(
    denoise: Denoise,
    x: Tensor,
    alphas: Tensor,
    mask_id: int,
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    temperature: float = 1.0,
    randomness: float = 0.0,
    cache: bool = True,
    callback: Callable[[int, Tensor], None] | None = None,
) -> TokenSample:
    """Confidence-ordered decoding (MaskGIT, Chang et al. 2022, Sec. 3.2 and eq. 1).

    At the step from ``t`` to ``s`` the number of masked tokens is brought down to ``floor(L (1 - alpha_s))``
    (so a step may reveal none): a value is drawn for every masked position (``temperature = 0``: the most probable
    value), and the positions whose value has the highest probability are revealed. ``randomness > 0`` adds
    ``randomness * (1 - progress)`` times Gumbel noise to the log-confidences (MaskGIT's annealed choice
    temperature).
    """
    check_alpha_grid(alphas)
    alphas = alphas.double()
    n, length = x.shape
    steps = len(alphas) - 1

    def step(k: int, x: Tensor, masked: Tensor, probs: Tensor) -> tuple[Tensor, Tensor]:
        u = _uniform((n, 2, length), generator, x.device)
        if temperature == 0:
            value = probs.argmax(-1)
        else:
            value = categorical(temper(probs, temperature), u[:, 0])
        conf = probs.gather(-1, value[..., None]).squeeze(-1).double().clamp_min(1e-30).log()
        if randomness > 0:
            gumbel = -torch.log(-torch.log(u[:, 1].clamp(1e-12, 1 - 1e-12)))
            conf = conf + randomness * (1 - k / steps) * gumbel
        conf = torch.where(masked, conf, torch.full_like(conf, -float("inf")))
        target = int(torch.floor(length * (1 - alphas[k + 1]) + 1e-9)) if k < steps - 1 else 0
        n_reveal = (masked.sum(-1) - target).clamp_min(0)
        rank = conf.argsort(-1, descending=True).argsort(-1)
        return masked & (rank < n_reveal[:, None]), value

    return _reveal_walk(denoise, x, alphas, mask_id, step, cache, callback)

#: sampler name -> function ``(denoise, x, alphas, mask_id, *, generator, **options) -> TokenSample``
MASKED_SAMPLERS: dict[str, Callable[..., TokenSample]] = {
    "ancestral": sample_masked_ancestral,
    "greedy": sample_masked_greedy,
}
