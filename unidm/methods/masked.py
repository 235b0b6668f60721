"""Masked (absorbing) discrete diffusion as a :class:`GenerativeModel`.

Forward process: :mod:`unidm.processes.absorbing` (each token replaced by MASK with probability ``1 - alpha_t``).
Network: logits of ``p(x0 | x_t)`` over the data's symbols at every position (any sequence network, e.g.
:class:`unidm.nn.transformer.Transformer`), with the two constraints of MDLM's "SUBS" parameterization (Sahoo et al.
2024, Sec. 3.2.3): MASK is never predicted, and a token already revealed is copied ("carry-over unmasking").
Loss: the continuous-time ELBO (Shi et al. 2024, MD4 eq. 4; MDLM eq. 10), a weighted cross-entropy over the masked
positions. Sampling: :mod:`unidm.methods.masked_sampling`.

The data's symbols are ``0 .. vocab_size - 1``; MASK is the extra id ``vocab_size``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..processes.absorbing import mask_tokens
from ..rng import rand
from .base import GenerativeModel
from .masked_sampling import MASKED_SAMPLERS
from .token_base import TokenDiffusion
from .token_sampling import TokenSample

__all__ = ["MaskedDiffusion", "MASKED_FAMILIES"]


class MaskedDiffusion(TokenDiffusion):
    """Absorbing-state diffusion over sequences of ``vocab_size`` symbols.

    Args:
        net: ``net(tokens [B, L], c_noise [B], class_labels=None) -> logits [B, L, >= vocab_size]``; inputs use ids
            ``0 .. vocab_size`` (MASK = ``vocab_size``); only the first ``vocab_size`` logits are used.
        vocab_size: number of data symbols.
        schedule: name in :data:`unidm.processes.absorbing.MASKING_SCHEDULES` (``linear``, ``cosine``,
            ``log-linear``, ``polynomial``); ``schedule_options`` its arguments.
        antithetic: draw the batch's training times as ``(u + i / B) mod 1``, the low-discrepancy sampler of VDM
            (Kingma et al. 2021, Sec. 3.4 / App. I.2) also used by MD4, instead of independently.
        num_classes: > 0 for a class-conditional model; ``label_dropout`` the chance of training with the null label.

    The network is conditioned on ``c_noise`` = the fraction of masked positions of ``x_t``, a function of ``x_t``
    alone: the true ``p(x0 | x_t)`` does not depend on ``t`` (Ou et al. 2024), and this keeps the sampler's cache
    exact.
    """

    family = "masked"
    samplers = MASKED_SAMPLERS
    grids = ("uniform-t",)
    default_sampling = {"sampler": "ancestral", "steps": 64, "grid": "uniform-t"}
    sampler_seed_offset = 7_919
    sampler_internal = ("denoise", "x", "alphas", "mask_id", "generator")
    extra_input_ids = 1  # MASK
    min_vocab_size = 1
    schedule_label = "masking schedule"
    n_t_meaning = "ELBO time draws per sequence"

    def __init__(
        self,
        net: nn.Module,
        vocab_size: int,
        schedule: str = "linear",
        schedule_options: dict | None = None,
        antithetic: bool = True,
        data_shape: Sequence[int] = (64,),
        num_classes: int = 0,
        label_dropout: float = 0.0,
    ):
        super().__init__(net, schedule, schedule_options, antithetic, data_shape, num_classes, label_dropout)
        self.vocab_size, self.mask_id = int(vocab_size), int(vocab_size)

    def log_probs(self, x_t: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """``log p(x0 | x_t)`` ``[B, L, vocab_size]``: the network's categorical at masked positions, a point mass
        on the observed token elsewhere (MDLM's SUBS parameterization)."""
        masked = x_t == self.mask_id
        c_noise = masked.float().mean(-1)
        cond = {} if class_labels is None else {"class_labels": class_labels}
        logits = self.net(x_t, c_noise, **cond)[..., : self.vocab_size].float()
        logp = torch.log_softmax(logits, dim=-1)
        observed = torch.full_like(logp, -float("inf")).scatter(
            -1, x_t.clamp_max(self.vocab_size - 1)[..., None], 0.0)
        return torch.where(masked[..., None], logp, observed)

    def _masked_nll(self, x0: Tensor, x_t: Tensor, labels: Tensor | None) -> Tensor:
        """``sum_{i: x_t^i = MASK} -log p(x0^i | x_t)`` per sequence ``[B]``."""
        logp = self.log_probs(x_t, labels)
        nll = -logp.gather(-1, x0[..., None]).squeeze(-1)
        return torch.where(x_t == self.mask_id, nll, torch.zeros_like(nll)).sum(-1)

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """The continuous-time negative ELBO (MD4 eq. 4) per example, in nats per token ``[B]``:
        one draw of ``t``, ``x_t ~ q(x_t | x0)``, weight ``-alpha_t' / (1 - alpha_t)``."""
        x0 = batch["x"].long()
        b, length = x0.shape
        t = self.training_times(b, x0.device, generator).clamp_min(1e-6)
        x_t = mask_tokens(x0, self.schedule.alpha(t), self.mask_id, generator)
        w = self.schedule.weight(t).float()
        return w * self._masked_nll(x0, x_t, self._labels(batch, generator)) / length

    @torch.no_grad()
    def nelbo(self, x0: Tensor, *, n_t: int = 16, generator: torch.Generator | None = None,
              class_labels: Tensor | None = None) -> Tensor:
        """A Monte-Carlo estimate of the negative ELBO ``>= -log p(x0)`` in nats per sequence ``[B]``.

        Written in ``alpha`` (MD4 Sec. 4: the continuous-time ELBO depends on the schedule only through its end
        points), ``-log p(x0) <= int_0^1 (1 / (1 - alpha)) E[masked NLL] d alpha``: ``n_t`` stratified draws of
        ``1 - alpha`` per sequence. Bits per token: ``nelbo / (L log 2)``.
        """
        x0 = x0.long()
        b = x0.shape[0]
        total = torch.zeros(b, dtype=torch.float64, device=x0.device)
        offset = rand((b,), generator, torch.float64, x0.device)
        for j in range(n_t):
            m = ((offset + j) / n_t).clamp_min(1e-9)  # 1 - alpha, stratified in (0, 1)
            x_t = mask_tokens(x0, 1 - m, self.mask_id, generator)
            total += self._masked_nll(x0, x_t, class_labels).double() / m
        return total / n_t

    def alpha_grid(self, steps: int, grid: str = "uniform-t") -> Tensor:
        """``alpha`` along ``steps`` equal steps of ``t`` from 1 to 0 (``[steps + 1]``); the last is exactly 1."""
        self.check_sampling(None, steps, grid)
        t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        a = self.schedule.alpha(t)
        a[-1] = 1.0
        return a

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        seeds: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        grid: str | None = None,
        class_labels: Tensor | None = None,
        prompt: Tensor | None = None,
        **options,
    ) -> TokenSample:
        """``n`` sequences with ``sampler`` (``ancestral`` or ``greedy``) over ``steps`` steps, with statistics.

        ``seeds``: one per sample; each sample's draws then depend only on its seed. ``prompt [n, L]``: tokens to
        keep fixed (MASK elsewhere), for infilling. ``options`` go to the sampler (``temperature``, ``cache``,
        ``randomness`` for greedy).
        """
        plan = self.check_sampling(sampler, steps, grid, options)
        device = self.device
        length = self.data_shape[0]
        x = torch.full((n, length), self.mask_id, dtype=torch.long, device=device)
        if prompt is not None:
            x = torch.as_tensor(prompt, device=device).long().clone()
        gens = self.sample_generators(seeds, generator)
        labels = self.sample_labels(class_labels, n)

        def denoise(x_t: Tensor, rows: Tensor) -> Tensor:
            return self.log_probs(x_t, None if labels is None else labels[rows]).exp()

        with self.evaluating():
            return MASKED_SAMPLERS[plan.sampler](denoise, x, self.alpha_grid(plan.steps, plan.grid), self.mask_id,
                                                 generator=gens, **plan.options)


MASKED_FAMILIES: dict[str, type[GenerativeModel]] = {"masked": MaskedDiffusion}
