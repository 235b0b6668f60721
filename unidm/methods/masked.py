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

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from ..processes.absorbing import MASKING_SCHEDULES, MaskingSchedule, mask_tokens
from ..utils import as_options, check_choice, check_kwargs, valid_kwargs
from .base import GenerativeModel, SupportsLikelihood, TrainableModel
from .masked_sampling import MASKED_SAMPLERS, MaskedSample

__all__ = ["MaskedDiffusion", "MASKED_FAMILIES"]


class MaskedDiffusion(GenerativeModel, SupportsLikelihood):
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
        super().__init__(data_shape, num_classes)
        check_choice(schedule, MASKING_SCHEDULES, "masking schedule")
        schedule_options = as_options(schedule_options, "method.schedule_options")
        check_kwargs(MASKING_SCHEDULES[schedule], schedule_options, f"schedule_options for {schedule!r}")
        self.net = net
        self.vocab_size, self.mask_id = int(vocab_size), int(vocab_size)
        self.schedule: MaskingSchedule = MASKING_SCHEDULES[schedule](**schedule_options)
        self.antithetic = antithetic
        self.label_dropout = float(label_dropout)

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

    def _labels(self, batch: dict[str, Tensor], generator) -> Tensor | None:
        if self.num_classes == 0:
            return None
        return self.drop_labels(batch["y"].long(), self.label_dropout, generator)

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
        u = torch.rand((1,) if self.antithetic else (b,), generator=generator, device=x0.device, dtype=torch.float64)
        t = (u + torch.arange(b, device=x0.device) / b) % 1.0 if self.antithetic else u
        t = t.clamp_min(1e-6)
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
        offset = torch.rand(b, generator=generator, dtype=torch.float64).to(x0.device)
        for j in range(n_t):
            m = ((offset + j) / n_t).clamp_min(1e-9)  # 1 - alpha, stratified in (0, 1)
            x_t = mask_tokens(x0, 1 - m, self.mask_id, generator)
            total += self._masked_nll(x0, x_t, class_labels).double() / m
        return total / n_t

    @torch.no_grad()
    def bits_per_token(self, x0: Tensor, *, n_t: int = 16, batch_size: int = 256, seed: int = 0) -> float:
        """The ELBO bound on held-out ``x0 [N, L]`` in bits per token (an upper bound on the NLL)."""
        g = torch.Generator().manual_seed(seed)
        with self.evaluating():
            tot = sum(float(self.nelbo(c.to(self.device), n_t=n_t, generator=g).sum()) for c in x0.split(batch_size))
        return tot / (x0.numel() * math.log(2))

    def likelihood_methods(self) -> dict[str, str]:
        return {"elbo": "bound"}

    def likelihood_options(self, method: str) -> list[str]:
        return ["n_t"]

    def likelihood(self, x: Tensor, *, method: str | None = None, num_levels: int | None = None,
                   generator: torch.Generator | None = None, class_labels: Tensor | None = None, n_t: int = 16):
        """The ELBO bound (MD4 eq. 4, :meth:`nelbo`) per sequence, in nats and bits per token (``kind="bound"``)."""
        from ..likelihood import Likelihood

        self.check_likelihood(method, {})
        if num_levels is not None:
            raise ValueError("num_levels does not apply to token data: masked diffusion scores the tokens themselves")
        if isinstance(n_t, bool) or not isinstance(n_t, int) or n_t < 1:
            raise ValueError(f"n_t (ELBO time draws per sequence) must be a whole number >= 1, got {n_t!r}")
        with self.evaluating():
            nll = self.nelbo(x.long(), n_t=n_t, generator=generator, class_labels=class_labels)
        return Likelihood(nll=nll, bits_per_dim=nll / (x[0].numel() * math.log(2)), kind="bound", nfe=float(n_t))

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
    ) -> MaskedSample:
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
        labels = None
        if class_labels is not None:
            labels = torch.as_tensor(class_labels, device=device).long().expand(n)

        def denoise(x_t: Tensor, rows: Tensor) -> Tensor:
            return self.log_probs(x_t, None if labels is None else labels[rows]).exp()

        with self.evaluating():
            return MASKED_SAMPLERS[plan.sampler](denoise, x, self.alpha_grid(plan.steps, plan.grid), self.mask_id,
                                                 generator=gens, **plan.options)

    @torch.no_grad()
    def generate(self, n: int, *, seeds: Sequence[int] | None = None, generator: torch.Generator | None = None,
                 sampler: str | None = None, steps: int | None = None, grid: str | None = None,
                 **options) -> Tensor:
        """``n`` token sequences ``[n, L]`` (see :meth:`sample`, which also reports the network evaluations)."""
        return self.sample(n, seeds=seeds, generator=generator, sampler=sampler, steps=steps, grid=grid,
                           **options).x

    @classmethod
    def from_config(cls, model_cfg: dict, method_cfg: dict, data,
                    frozen: dict[str, TrainableModel] | None = None) -> "MaskedDiffusion":
        """Build from a run config for a ``kind="tokens"`` dataset: the network gets ``vocab_size + 1`` input ids
        (MASK included) and, if it takes ``out_size``, ``vocab_size`` outputs."""
        from ..nn import NETWORKS, build_network

        if data.kind != "tokens" or data.vocab_size < 1:
            raise ValueError(f"family 'masked' needs token data (kind='tokens'), got {data.name!r} of kind "
                             f"{data.kind!r}")
        method = dict(method_cfg)
        conditional = bool(method.pop("conditional", False))
        if conditional and data.num_classes == 0:
            raise ValueError(f"method.conditional=true but dataset {data.name!r} has no labels")
        check_kwargs(cls, method, "method option for family 'masked'",
                     exclude=("net", "vocab_size", "num_classes", "data_shape"))
        model = dict(model_cfg)
        arch = model.pop("arch", "transformer")
        check_choice(arch, NETWORKS, "model.arch")
        if "out_size" in valid_kwargs(NETWORKS[arch]):
            model.setdefault("out_size", data.vocab_size)
        derived = {"vocab_size": data.vocab_size + 1, "seq_len": data.shape[0], "dim": data.shape[0],
                   "num_classes": data.num_classes if conditional else 0}
        net = build_network(arch, derived, **model)
        return cls(net, data.vocab_size, data_shape=data.shape, num_classes=data.num_classes if conditional else 0,
                   **method)


MASKED_FAMILIES: dict[str, type[GenerativeModel]] = {"masked": MaskedDiffusion}
