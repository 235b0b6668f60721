"""What the discrete token diffusion families share: masked (absorbing) and uniform-replacement diffusion.

Both corrupt each token of a sequence of ``vocab_size`` symbols independently with a schedule ``alpha_t`` of
:data:`unidm.processes.absorbing.MASKING_SCHEDULES` (the probability that a token is still the original one), train
a network for ``p(x0 | x_t)`` on the negative ELBO (Austin et al. 2021, D3PM eq. 1; Shi et al. 2024, MD4 eq. 4),
and score held-out tokens with a Monte-Carlo estimate of that bound. :class:`TokenDiffusion` holds the pieces that
do not depend on the corruption: building from a run config, the schedule and its options, the training times,
class labels, bits per token and the ``elbo`` likelihood face. A family supplies ``loss``, ``nelbo`` and ``sample``
(:mod:`unidm.methods.masked`, :mod:`unidm.methods.uniform`); ``generate`` is :meth:`GenerativeModel.generate`'s
default (the samples of ``sample``'s result).
"""

from __future__ import annotations

import math
from typing import ClassVar, Sequence

import torch
from torch import Tensor, nn

from ..processes.absorbing import MASKING_SCHEDULES, MaskingSchedule
from ..rng import rand
from ..utils import as_options, check_choice, check_kwargs
from .base import GenerativeModel, SupportsLikelihood, TrainableModel, pop_conditional
from .token_sampling import TokenSample

__all__ = ["TokenDiffusion", "training_times"]


def training_times(b: int, antithetic: bool, device, generator: torch.Generator | None = None) -> Tensor:
    """``[b]`` float64 uniforms in ``[0, 1)`` on ``device`` for a batch: stratified ``(u + i / b) mod 1`` from one
    draw when ``antithetic`` (the low-discrepancy sampler of VDM, Kingma et al. 2021, App. I.2), else ``b``
    independent draws; drawn on ``generator``'s own device (:func:`unidm.rng.rand`).

    Example:
        >>> t = training_times(4, True, "cpu", torch.Generator().manual_seed(0))
        >>> sorted(((t * 4) // 1).long().tolist())  # one time in each quarter
        [0, 1, 2, 3]
    """
    u = rand((1,) if antithetic else (b,), generator, torch.float64, device)
    return (u + torch.arange(b, device=device) / b) % 1.0 if antithetic else u


class TokenDiffusion(GenerativeModel, SupportsLikelihood):
    """Base of the token diffusion families over sequences ``[L]`` of ``vocab_size`` symbols (``0 .. K - 1``).

    Args (the ones every family takes):
        net: ``net(tokens [B, L], c_noise [B], class_labels=None) -> logits [B, L, >= vocab_size]``.
        schedule: ``alpha_t``, a name in :data:`unidm.processes.absorbing.MASKING_SCHEDULES`; ``schedule_options``
            its arguments.
        antithetic: draw the batch's training times as ``(u + i / B) mod 1``, the low-discrepancy sampler of VDM
            (Kingma et al. 2021, Sec. 3.4 / App. I.2), instead of independently (:meth:`training_times`).
        num_classes: > 0 for a class-conditional model; ``label_dropout`` the chance of training with the null label.

    A family declares:
        extra_input_ids: ids the network reads beyond the data's ``vocab_size`` (1 for MASK, 0 for none).
        min_vocab_size: the smallest vocabulary it models.
        schedule_label: what an unknown schedule name is called in the error.
        n_t_meaning: what one of the likelihood's ``n_t`` draws is, for its error.

    Example:
        >>> from unidm.methods.uniform import UniformDiffusion
        >>> issubclass(UniformDiffusion, TokenDiffusion), UniformDiffusion.extra_input_ids
        (True, 0)
    """

    extra_input_ids: ClassVar[int] = 0
    min_vocab_size: ClassVar[int] = 1
    schedule_label: ClassVar[str] = "schedule"
    n_t_meaning: ClassVar[str] = "ELBO draws per sequence"

    def __init__(self, net: nn.Module, schedule: str, schedule_options: dict | None, antithetic: bool,
                 data_shape: Sequence[int], num_classes: int, label_dropout: float):
        super().__init__(data_shape, num_classes)
        check_choice(schedule, MASKING_SCHEDULES, self.schedule_label)
        schedule_options = as_options(schedule_options, "method.schedule_options")
        check_kwargs(MASKING_SCHEDULES[schedule], schedule_options, f"schedule_options for {schedule!r}")
        self.net = net
        self.schedule: MaskingSchedule = MASKING_SCHEDULES[schedule](**schedule_options)
        self.antithetic = antithetic
        self.label_dropout = float(label_dropout)

    # --- training ----------------------------------------------------------------------------------------------
    def training_times(self, b: int, device, generator: torch.Generator | None = None) -> Tensor:
        """:func:`training_times` of a batch of ``b`` with this model's ``antithetic``."""
        return training_times(b, self.antithetic, device, generator)

    def _labels(self, batch: dict[str, Tensor], generator) -> Tensor | None:
        if self.num_classes == 0:
            return None
        return self.drop_labels(batch["y"].long(), self.label_dropout, generator)

    # --- likelihood --------------------------------------------------------------------------------------------
    def elbo_tokens(self, x: Tensor) -> Tensor:
        """``x`` as the long tokens the bound scores, on the model's device (a family may check them here)."""
        return x.long().to(self.device)

    def nelbo(self, x0: Tensor, *, n_t: int = 16, generator: torch.Generator | None = None,
              class_labels: Tensor | None = None) -> Tensor:
        """A Monte-Carlo estimate of the negative ELBO ``>= -log p(x0)`` in nats per sequence ``[B]``."""
        raise NotImplementedError

    @torch.no_grad()
    def bits_per_token(self, x0: Tensor, *, n_t: int = 16, batch_size: int = 256, seed: int = 0) -> float:
        """The ELBO bound on held-out ``x0 [N, L]`` in bits per token (an upper bound on the NLL)."""
        x0 = self.elbo_tokens(x0)
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
        """The ELBO bound (:meth:`nelbo`) per sequence, in nats and bits per token (``kind="bound"``)."""
        from ..likelihood import Likelihood

        self.check_likelihood(method, {})
        if num_levels is not None:
            raise ValueError(f"num_levels does not apply to token data: {self.family} diffusion scores the tokens "
                             f"themselves")
        if isinstance(n_t, bool) or not isinstance(n_t, int) or n_t < 1:
            raise ValueError(f"n_t ({self.n_t_meaning}) must be a whole number >= 1, got {n_t!r}")
        x = self.elbo_tokens(x)
        with self.evaluating():
            nll = self.nelbo(x, n_t=n_t, generator=generator, class_labels=class_labels)
        return Likelihood(nll=nll, bits_per_dim=nll / (x[0].numel() * math.log(2)), kind="bound", nfe=float(n_t))

    # --- sampling ----------------------------------------------------------------------------------------------
    def sample_labels(self, class_labels: Tensor | None, n: int) -> Tensor | None:
        """``class_labels`` (one, or one per sample) as ``[n]`` long labels on the model's device, or None."""
        if class_labels is None:
            return None
        return torch.as_tensor(class_labels, device=self.device).long().expand(n)

    def sample(self, n: int, **kwargs) -> TokenSample:
        raise NotImplementedError

    @classmethod
    def from_config(cls, model_cfg: dict, method_cfg: dict, data,
                    frozen: dict[str, TrainableModel] | None = None) -> "TokenDiffusion":
        """Build from a run config for a ``kind="tokens"`` dataset: the network gets ``vocab_size +
        extra_input_ids`` input ids and, if it takes ``out_size``, ``vocab_size`` outputs."""
        from ..nn import build_network

        if data.kind != "tokens" or data.vocab_size < cls.min_vocab_size:
            needs = "" if cls.min_vocab_size <= 1 else f" of at least {cls.min_vocab_size} symbols"
            raise ValueError(f"family {cls.family!r} needs token data (kind='tokens'){needs}, got {data.name!r} of "
                             f"kind {data.kind!r}")
        method = dict(method_cfg)
        num_classes = pop_conditional(method, data)
        check_kwargs(cls, method, f"method option for family {cls.family!r}",
                     exclude=("net", "vocab_size", "num_classes", "data_shape"))
        model = dict(model_cfg)
        arch = model.pop("arch", "transformer")
        derived = {"vocab_size": data.vocab_size + cls.extra_input_ids, "seq_len": data.shape[0],
                   "dim": data.shape[0], "num_classes": num_classes, "out_size": data.vocab_size}
        net = build_network(arch, derived, **model)
        return cls(net, data.vocab_size, data_shape=data.shape, num_classes=num_classes, **method)
