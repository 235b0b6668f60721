"""Uniform-replacement (multinomial) discrete diffusion as a :class:`GenerativeModel` (D3PM-uniform).

Forward process: :mod:`unidm.processes.uniform` (each token kept with probability ``alpha_t``, else redrawn
uniformly from the ``K`` classes; Hoogeboom et al. 2021; Austin et al. 2021, D3PM). Time is discrete:
``T = num_steps`` steps ``t_k = k / T`` of the schedule ``alpha`` shared with masked diffusion.

Network: logits of ``p(x0 | x_t)`` at every position (any sequence network of :mod:`unidm.nn`, e.g. ``transformer``
or ``token-mlp``), conditioned on ``c_noise = t``: unlike the absorbing process, the posterior of a replaced token
depends on how much noise there is, which ``x_t`` alone does not tell. By default the closed-form
``log q(x_t^i | x0^i)`` is added to the logits (``likelihood_skip``, :meth:`UniformDiffusion.log_probs`).

Reverse step (the x0-parameterisation, D3PM Sec. 3.3): ``p(x_{k-1} | x_k) = sum_x0 q(x_{k-1} | x_k, x0)
p(x0 | x_k)`` per position, the exact posterior averaged over the predicted ``x0``
(:func:`unidm.processes.uniform.reverse_probs`). This is the true reverse step when ``p(x0 | x_k)`` is the true
posterior of one token, so the auxiliary cross-entropy (which trains ``p(x0 | x_k)`` towards it) and the ELBO pull
the same way. D3PM's eq. 4 and Hoogeboom et al.'s ``theta_post`` instead normalise
``q(x_k | x_{k-1}) sum_x0 q(x_{k-1} | x0) p(x0 | x_k)``, which weights each ``x0`` by ``q(x_k | x0)`` once more.

Loss: the negative ELBO (D3PM eq. 1 and 5; Sohl-Dickstein et al. 2015)

    L = KL(q(x_T | x0) || Cat(1/K)) + sum_{k=1}^T E_q KL(q(x_{k-1} | x_k, x0) || p(x_{k-1} | x_k)),

(the ``k = 1`` term is ``-log p(x0 | x_1)``, since ``q(x_0 | x_1, x0)`` is a point mass), estimated with one
``k`` per example as ``prior + T KL_k``, plus D3PM's auxiliary cross-entropy ``T lambda (-log p(x0 | x_k))``
(D3PM eq. 5, ``L_lambda``; ``aux_weight = lambda = 0.01`` as in D3PM's text8 models, Table 2). Per token, nats.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ..processes.uniform import (categorical_kl, posterior_probs, prior_kl, replace_tokens, reverse_probs,
                                uniform_marginal)
from ..rng import Generators, rand
from .base import GenerativeModel
from .token_base import TokenDiffusion
from .token_sampling import TokenSample, categorical, check_alpha_grid, temper

__all__ = ["UniformDiffusion", "sample_uniform_ancestral", "UNIFORM_SAMPLERS", "UNIFORM_FAMILIES"]

#: ``denoise(x_t [n, L], t) -> p(x0 | x_t) [n, L, K]`` at time ``t`` (a float in [0, 1])
Denoise = Callable[[Tensor, float], Tensor]


def sample_uniform_ancestral(
    denoise: Denoise,
    x: Tensor,
    times: Tensor,
    alphas: Tensor,
    *,
    generator: Generators = None,
    temperature: float = 1.0,
    callback: Callable[[int, Tensor], None] | None = None,
) -> TokenSample:
    """Ancestral sampling of a uniform-replacement diffusion (D3PM Sec. 3.3; Hoogeboom et al. 2021, Sec. 4).

    Args:
        denoise: ``(x_t [n, L], t) -> p(x0 | x_t) [n, L, K]``.
        x: ``[n, L]`` tokens drawn from the prior ``Cat(1/K)``.
        times, alphas: ``[S + 1]`` times ``1 = t_0 > ... > t_S = 0`` and their ``alpha`` (non-decreasing; the last
            1, so the last step draws ``x0 ~ p(x0 | x_{t_1})``).
        generator: one generator, or one per sequence (sequence ``i`` then depends on generator ``i`` only).
        temperature: divides the log-probabilities of ``p(x0 | x_t)`` (1: the model's own).

    Each step draws ``x_s ~ sum_x0 q(x_s | x_t, x0) p(x0 | x_t)`` at every position.

    Example:
        >>> probs = torch.tensor([[[0.0, 1.0, 0.0]]])  # p(x0 | x_t): always token 1
        >>> out = sample_uniform_ancestral(lambda x, t: probs.expand(len(x), 2, 3), torch.zeros(4, 2).long(),
        ...                                torch.tensor([1.0, 0.5, 0.0]), torch.tensor([0.0, 0.5, 1.0]),
        ...                                generator=torch.Generator().manual_seed(0))
        >>> out.x.tolist(), out.nfe
        ([[1, 1], [1, 1], [1, 1], [1, 1]], 2)
    """
    check_alpha_grid(alphas)
    if times.shape != alphas.shape:
        raise ValueError(f"times {tuple(times.shape)} and alphas {tuple(alphas.shape)} must match")
    alphas = alphas.double()
    n, length = x.shape
    steps = len(alphas) - 1
    for k in range(steps):
        p_x0 = temper(denoise(x, float(times[k])), temperature)
        probs = reverse_probs(x, p_x0, alphas[k + 1], alphas[k])
        x = categorical(probs, rand((n, length), generator, dtype=torch.float64, device=x.device))
        if callback is not None:
            callback(k, x)
    return TokenSample(x, steps, float(steps), steps)


#: sampler name -> function ``(denoise, x, times, alphas, *, generator, **options) -> TokenSample``
UNIFORM_SAMPLERS: dict[str, Callable[..., TokenSample]] = {"ancestral": sample_uniform_ancestral}


class UniformDiffusion(TokenDiffusion):
    """Uniform-replacement diffusion over sequences of ``vocab_size`` symbols, in ``num_steps`` discrete steps.

    Args:
        net: ``net(tokens [B, L], c_noise [B], class_labels=None) -> logits [B, L, >= vocab_size]`` (only the first
            ``vocab_size`` logits are used); ``c_noise = t`` in [0, 1].
        vocab_size: ``K``, the number of data symbols (>= 2).
        schedule: ``alpha_t``, a name in :data:`unidm.processes.absorbing.MASKING_SCHEDULES`; ``schedule_options``
            its arguments.
        num_steps: ``T``, the number of diffusion steps of the ELBO (D3PM: 1000).
        aux_weight: ``lambda`` of D3PM's auxiliary cross-entropy (0: the plain ELBO).
        likelihood_skip: add ``log q(x_t^i | x0^i = j)`` to the network's logits, so that the network models what
            the other positions say about token ``i`` (see :meth:`log_probs`); False: the plain D3PM logits.
        antithetic: draw the batch's training steps stratified, ``(u + i / B) mod 1`` (VDM App. I.2), instead of
            independently.
        num_classes: > 0 for a class-conditional model; ``label_dropout`` the chance of training with the null label.

    Example:
        >>> from unidm.nn.transformer import TokenMLP
        >>> model = UniformDiffusion(TokenMLP(vocab_size=3, seq_len=4, hidden=16, depth=1), 3, num_steps=10,
        ...                          data_shape=(4,))
        >>> model.loss({"x": torch.zeros(2, 4).long()}, torch.Generator().manual_seed(0)).shape
        torch.Size([2])
        >>> model.generate(2, seeds=[0, 1], steps=5).shape
        torch.Size([2, 4])
    """

    family = "uniform"
    samplers = UNIFORM_SAMPLERS
    grids = ("uniform-t",)
    default_sampling = {"sampler": "ancestral", "steps": 256, "grid": "uniform-t"}
    sampler_seed_offset = 15_485_863
    sampler_internal = ("denoise", "x", "times", "alphas", "generator")
    extra_input_ids = 0  # the network reads and predicts the data's symbols only
    min_vocab_size = 2
    schedule_label = "schedule"
    n_t_meaning = "ELBO steps drawn per sequence"

    def __init__(
        self,
        net: nn.Module,
        vocab_size: int,
        schedule: str = "linear",
        schedule_options: dict | None = None,
        num_steps: int = 1000,
        aux_weight: float = 0.01,
        likelihood_skip: bool = True,
        antithetic: bool = True,
        data_shape: Sequence[int] = (64,),
        num_classes: int = 0,
        label_dropout: float = 0.0,
    ):
        super().__init__(net, schedule, schedule_options, antithetic, data_shape, num_classes, label_dropout)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
            raise ValueError(f"uniform diffusion needs a vocabulary of at least 2 symbols, got {vocab_size!r}")
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"method.num_steps (T, the diffusion steps) must be a whole number >= 1, got "
                             f"{num_steps!r}")
        if isinstance(aux_weight, bool) or not isinstance(aux_weight, (int, float)) or not aux_weight >= 0:
            raise ValueError(f"method.aux_weight (D3PM's lambda) must be a number >= 0, got {aux_weight!r}")
        self.vocab_size, self.num_steps, self.aux_weight = vocab_size, num_steps, float(aux_weight)
        self.likelihood_skip = bool(likelihood_skip)

    # --- the process on the model's clock ------------------------------------------------------------------------
    def alpha(self, t: Tensor) -> Tensor:
        """``alpha_t`` (float64) with ``alpha_0 = 1`` exactly."""
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.where(t > 0, self.schedule.alpha(t), torch.ones_like(t))

    def check_tokens(self, x: Tensor) -> Tensor:
        """``x`` as long tokens ``[N, L]`` of this model's vocabulary, or one line saying what is wrong."""
        x = torch.as_tensor(x)
        length = self.data_shape[0]
        if x.dim() != 2 or x.shape[1] != length:
            raise ValueError(f"expected token sequences of shape [N, {length}], got {tuple(x.shape)}")
        if x.is_floating_point() and not bool((x == x.round()).all()):
            raise ValueError("tokens must be whole-number ids, got fractional values")
        x = x.long()
        if len(x) and (int(x.min()) < 0 or int(x.max()) >= self.vocab_size):
            raise ValueError(f"token ids must lie in 0 .. {self.vocab_size - 1} (this model's vocabulary of "
                             f"{self.vocab_size} symbols), got ids {int(x.min())} .. {int(x.max())}; does the data "
                             f"match the run's vocabulary?")
        return x

    def elbo_tokens(self, x: Tensor) -> Tensor:
        """``x`` checked (:meth:`check_tokens`) and on the model's device."""
        return self.check_tokens(x).to(self.device)

    def log_probs(self, x_t: Tensor, t: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """``log p(x0 | x_t)`` ``[B, L, vocab_size]`` (float64) at times ``t [B]``.

        With ``likelihood_skip`` the logits are ``net(x_t, t) + log q(x_t^i | x0^i = j)``. The corruption is
        independent across positions, so Bayes' rule factorises the true posterior of one token exactly as
        ``q(x0^i | x_t) ∝ q(x_t^i | x0^i) q(x0^i | x_t^{-i})``: the first factor is known in closed form
        (``alpha_t [x0^i = x_t^i] + (1 - alpha_t) / K``), and the network is left with the second, what the rest of
        the sequence says about token ``i``. A network that outputs zeros is then the exact model of independent
        uniform tokens (``L log2 K`` bits), where the plain logits start as a model that trusts no token of
        ``x_t`` even at ``t ~ 0``, whose bound is far above ``log2 K``.
        """
        cond = {} if class_labels is None else {"class_labels": class_labels}
        t = torch.as_tensor(t, dtype=torch.float64, device=x_t.device).reshape(-1).expand(x_t.shape[0])
        logits = self.net(x_t, t.float(), **cond)[..., : self.vocab_size].double()
        if self.likelihood_skip:
            logits = logits + uniform_marginal(x_t, self.alpha(t).to(x_t.device), self.vocab_size).log()
        return torch.log_softmax(logits, dim=-1)

    def step_kl(self, x0: Tensor, x_t: Tensor, k: Tensor, class_labels: Tensor | None = None,
                log_p: Tensor | None = None) -> Tensor:
        """The ELBO's step-``k`` term ``KL(q(x_{k-1} | x_k, x0) || p(x_{k-1} | x_k))`` summed over positions, ``[B]``
        nats, for ``x_t = x_k`` (``k [B]`` in ``1 .. T``; ``k = 1`` gives ``-log p(x0 | x_1)``). ``log_p``: the
        network's ``log p(x0 | x_k)`` if already computed."""
        t, s = k.double() / self.num_steps, (k.double() - 1) / self.num_steps
        a_t, a_s = self.alpha(t).to(x0.device), self.alpha(s).to(x0.device)
        if log_p is None:
            log_p = self.log_probs(x_t, t, class_labels)
        q = posterior_probs(x_t, x0, a_s, a_t, self.vocab_size)
        return categorical_kl(q, reverse_probs(x_t, log_p.exp(), a_s, a_t)).sum(-1)

    def prior_term(self, x0: Tensor) -> Tensor:
        """``KL(q(x_T | x0) || Cat(1/K))`` summed over positions, ``[B]`` nats."""
        return prior_kl(x0, float(self.alpha(torch.tensor(1.0))), self.vocab_size).to(x0.device)

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """``(prior + T (KL_k + lambda CE_k)) / L`` per example ``[B]`` (nats per token): one step ``k`` uniform in
        ``1 .. T``, ``x_k ~ q(x_k | x0)``; without ``lambda`` an unbiased estimate of the negative ELBO."""
        x0 = batch["x"].long()
        b, length = x0.shape
        u = self.training_times(b, x0.device, generator)
        k = (u * self.num_steps).long().clamp(0, self.num_steps - 1) + 1
        x_t = replace_tokens(x0, self.alpha(k.double() / self.num_steps).to(x0.device), self.vocab_size, generator)
        log_p = self.log_probs(x_t, k.double() / self.num_steps, self._labels(batch, generator))
        kl = self.step_kl(x0, x_t, k, log_p=log_p)
        ce = -log_p.gather(-1, x0[..., None]).squeeze(-1).sum(-1)
        total = self.prior_term(x0) + self.num_steps * (kl + self.aux_weight * ce)
        return (total / length).float()

    @torch.no_grad()
    def nelbo(self, x0: Tensor, *, n_t: int = 16, generator: torch.Generator | None = None,
              class_labels: Tensor | None = None) -> Tensor:
        """An unbiased estimate of the negative ELBO ``>= -log p(x0)`` in nats per sequence ``[B]``: the prior term
        plus ``T`` times the mean of ``n_t`` step terms, the steps stratified over ``1 .. T`` (with ``n_t = T``
        every step once). Bits per token: ``nelbo / (L log 2)``."""
        x0 = x0.long()
        b = x0.shape[0]
        offset = rand((b,), generator, torch.float64, x0.device)
        total = torch.zeros(b, dtype=torch.float64, device=x0.device)
        for j in range(n_t):
            k = (((offset + j) / n_t) * self.num_steps).long().clamp(0, self.num_steps - 1) + 1
            x_t = replace_tokens(x0, self.alpha(k.double() / self.num_steps).to(x0.device), self.vocab_size,
                                 generator)
            total += self.step_kl(x0, x_t, k, class_labels)
        return self.prior_term(x0) + self.num_steps * total / n_t

    # --- sampling ----------------------------------------------------------------------------------------------
    def time_grid(self, steps: int, grid: str = "uniform-t") -> tuple[Tensor, Tensor]:
        """``steps`` equal steps of ``t`` from 1 to 0: the times and their ``alpha`` (``[steps + 1]`` each)."""
        self.check_sampling(None, steps, grid)
        t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        return t, self.alpha(t)

    @torch.no_grad()
    def sample(self, n: int, *, seeds: Sequence[int] | None = None, generator: torch.Generator | None = None,
               sampler: str | None = None, steps: int | None = None, grid: str | None = None,
               class_labels: Tensor | None = None, **options) -> TokenSample:
        """``n`` sequences from the prior ``Cat(1/K)`` walked back over ``steps`` steps, with statistics.

        ``seeds``: one per sample; each sample's draws (prior and steps) then depend only on its seed.
        ``options`` go to the sampler (``temperature``).
        """
        plan = self.check_sampling(sampler, steps, grid, options)
        device = self.device
        gens = self.sample_generators(seeds, generator)
        u = rand((n, self.data_shape[0]), gens, dtype=torch.float64, device=device)
        x = (u * self.vocab_size).long().clamp_max(self.vocab_size - 1)
        labels = self.sample_labels(class_labels, n)

        def denoise(x_t: Tensor, t: float) -> Tensor:
            return self.log_probs(x_t, torch.full((len(x_t),), t, device=device), labels).exp()

        times, alphas = self.time_grid(plan.steps, plan.grid)
        with self.evaluating():
            return UNIFORM_SAMPLERS[plan.sampler](denoise, x, times, alphas, generator=gens, **plan.options)


UNIFORM_FAMILIES: dict[str, type[GenerativeModel]] = {"uniform": UniformDiffusion}
