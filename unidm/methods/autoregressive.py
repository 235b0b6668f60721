"""Autoregressive models of discrete data, ``p(x) = prod_d p(x_d | x_<d)``, as :class:`DensityModel` families.

Every model here maps the data to ``D`` coordinates with ``K`` levels each (:class:`DiscreteData`: binary or
``K``-symbol tokens, images on a grid of ``K`` levels in ``[-1, 1]``) and outputs, for every coordinate, the logits of
a categorical over the ``K`` levels given the coordinates before it in the model's order; ``K = 2`` is the Bernoulli
of the papers, written as a two-way softmax. The network reads the coordinates as values in ``[-1, 1]``.

- :class:`FVSBN`: the fully visible sigmoid belief network, one logistic (softmax) regression per coordinate on the
  coordinates before it (Frey 1998; Neal 1992).
- :class:`NADE`: the neural autoregressive distribution estimator (Larochelle & Murray 2011, eqs. 2-3), one hidden
  layer whose input weights are shared by every conditional, computed for all ``d`` in ``O(DH)``.
- :class:`MADE`: the masked autoencoder (Germain et al. 2015, Sec. 4) with order-agnostic and connectivity-agnostic
  training (a mask drawn from ``num_masks`` per step, Sec. 4.2) and an ensemble over orderings at evaluation.
- :class:`unidm.methods.pixelcnn.PixelCNN`: a gated PixelCNN for images.

``log_prob(x)`` is the exact log-probability (nats) of the discrete data ``x``, and :meth:`sample` draws ancestrally
(one coordinate at a time in the model's order), every draw of sample ``i`` from its own seed's generator.

Example:
    >>> import torch
    >>> from unidm.data import Dataset
    >>> x = torch.randint(2, (20, 6))
    >>> data = Dataset("bits", x, x[:4], kind="tokens", vocab_size=2)
    >>> model = NADE.from_config({"hidden": 8}, {}, data)
    >>> grid = torch.cartesian_prod(*[torch.arange(2)] * 6)  # all 64 binary vectors
    >>> round(float(model.log_prob(grid).detach().exp().sum()), 5)
    1.0
    >>> model.sample(3, seeds=[0, 1, 2]).shape
    torch.Size([3, 6])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..data import seed_for
from ..nn.masked import MaskedLinear
from ..rng import Generators, rand
from ..utils import valid_kwargs
from .base import DensityModel, TrainableModel

__all__ = ["DiscreteData", "sample_categorical", "ancestral", "split_options", "AutoregressiveModel", "FVSBN", "NADE", "MADE", "made_masks",
           "AUTOREGRESSIVE_FAMILIES"]


@dataclass(frozen=True)
class DiscreteData:
    """How a family of discrete models reads a dataset: ``D`` coordinates with ``K`` levels each.

    ``kind="tokens"``: long tensors ``[B, L]`` of symbols ``0 .. K - 1`` (``K = vocab_size``); ``kind="image"``:
    float images ``[B, C, H, W]`` on the grid ``-1 + k Delta``, ``Delta = 2 / (K - 1)`` (``K = meta["levels"]``).
    ``image_shape`` is ``(C, H, W)`` for images and for tokens that are pictures (``meta["image_shape"]``).
    """

    kind: str
    levels: int
    shape: tuple[int, ...]
    image_shape: tuple[int, int, int] | None = None

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    @classmethod
    def from_dataset(cls, data, family: str) -> "DiscreteData":
        """The dataset's discrete view; continuous data is refused with one line."""
        if data.kind == "tokens" and data.vocab_size >= 2:
            shape = tuple(data.shape)
            image = data.meta.get("image_shape")
            image = (1, *map(int, image)) if image is not None and math.prod(image) == math.prod(shape) else None
            return cls("tokens", int(data.vocab_size), shape, image)
        levels = data.meta.get("levels") if data.kind == "image" else None
        if not levels or int(levels) < 2:
            raise ValueError(f"family {family!r} models discrete data (tokens, or images on a grid of levels); "
                             f"dataset {data.name!r} holds continuous {data.kind!r} data")
        codec = cls("image", int(levels), tuple(data.shape), tuple(data.shape))
        if len(data.train):
            try:
                codec.to_index(data.train[:2000])
            except ValueError:
                raise ValueError(f"family {family!r} models discrete data; the images of dataset {data.name!r} are "
                                 f"not on the grid of {levels} levels in [-1, 1] its meta declares") from None
        return codec

    def to_index(self, x: Tensor) -> Tensor:
        """The levels ``[B, D]`` (long) of data ``x [B, *shape]``; a wrong shape or a value off the grid is refused."""
        if x.dim() != len(self.shape) + 1 or tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"expected data of shape [B, {', '.join(map(str, self.shape))}], got {tuple(x.shape)}")
        flat = x.reshape(len(x), -1)
        if self.kind == "tokens":
            idx = flat.round().long() if flat.is_floating_point() else flat.long()
            bad = (idx < 0) | (idx >= self.levels) | (flat != idx.to(flat.dtype))
            what = f"symbols 0 .. {self.levels - 1}"
        else:
            k = (flat.double() + 1) * (self.levels - 1) / 2
            idx = torch.nan_to_num(k, nan=-1.0).round().clamp(-1, self.levels).long()
            bad = ~torch.isfinite(k) | (idx < 0) | (idx >= self.levels) | ((k - idx).abs() > 1e-3)
            what = f"the {self.levels}-level grid of [-1, 1]"
        if bool(bad.any()):
            raise ValueError(f"data values must lie on {what}; got e.g. {float(flat[bad][0])!r}")
        return idx

    def values(self, idx: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """The network's input: levels as values in ``[-1, 1]`` ``[B, D]``."""
        return idx.to(dtype) * (2.0 / (self.levels - 1)) - 1.0

    def to_data(self, idx: Tensor) -> Tensor:
        """Levels ``[B, D]`` back in the data's form ``[B, *shape]`` (long symbols, or float images)."""
        out = idx if self.kind == "tokens" else self.values(idx)
        return out.reshape(len(idx), *self.shape)

    def check_levels(self, num_levels: int | None) -> None:
        """Refuse a ``num_levels`` that is not the model's own ``K``."""
        if num_levels is not None and int(num_levels) != self.levels:
            raise ValueError(f"the model's data has {self.levels} levels per coordinate; num_levels={num_levels} "
                             "does not apply")


def sample_categorical(logits: Tensor, generator: Generators = None) -> Tensor:
    """One draw ``[B, ...]`` of the categoricals with ``logits [B, ..., K]`` by inverting each CDF at
    ``u ~ U[0, 1)``; with a list of generators row ``i``'s draws come from generator ``i`` alone
    (:func:`unidm.rng.rand`).

    >>> sample_categorical(torch.tensor([[0.0, 50.0, 0.0]])).tolist()
    [1]
    """
    p = torch.softmax(logits.double(), dim=-1)
    u = rand(logits.shape[:-1], generator, torch.float64, logits.device)
    return (p.cumsum(-1)[..., :-1] <= u[..., None]).sum(-1)


def ancestral() -> None:
    """The one sampler of the exact-likelihood families: ancestral sampling (the model's own :meth:`sample`); it
    takes no options, and a step count does not apply to it (one pass per coordinate)."""


class AutoregressiveModel(DensityModel):
    """The shared part of the autoregressive families: the data's discrete view, ``log_prob``, ancestral sampling,
    the training loss, the exact likelihood.

    A family implements :meth:`logits` ``(v [B, D]) -> [B, D, K]`` where coordinate ``d``'s logits depend only on
    the ``v_j`` before ``d`` in :attr:`order`, and lists its network sizes in :attr:`network_options` (the run
    config's ``model`` section; its other constructor arguments are the ``method`` section).
    """

    samplers: ClassVar[Mapping] = {"ancestral": ancestral}
    sampler_seed_offset: ClassVar[int] = 48_611
    network_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, codec: DiscreteData):
        super().__init__(codec.shape)
        self.codec = codec
        self.levels, self.dim = codec.levels, codec.dim
        self.register_buffer("order", torch.arange(self.dim), persistent=False)

    # --- the network ---------------------------------------------------------------------------------------------
    def logits(self, v: Tensor) -> Tensor:
        """Logits ``[B, D, K]`` of every conditional ``p(x_d | x_<d)`` given the values ``v [B, D]``."""
        raise NotImplementedError

    def _log_prob_index(self, idx: Tensor) -> Tensor:
        logits = self.logits(self.codec.values(idx, self.dtype))
        return torch.log_softmax(logits, -1).gather(-1, idx[..., None]).squeeze(-1).sum(-1)

    # --- the density face ------------------------------------------------------------------------------------------
    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x) [B]`` in nats, exact, of the discrete data ``x [B, *data_shape]``."""
        return self._log_prob_index(self.codec.to_index(x).to(self.device))

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """``-log p(x) / D`` per example ``[B]`` (nats per coordinate): maximum likelihood."""
        return -self.log_prob(batch["x"]) / self.dim

    @torch.no_grad()
    def sample(self, n: int, *, seeds: Sequence[int] | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """``n`` ancestral samples ``[n, *data_shape]``: coordinate by coordinate in :attr:`order`, each from its
        conditional given those drawn before; with ``seeds`` sample ``i`` uses its seed's generator alone."""
        gens = self.sample_generators(seeds, generator)
        idx = torch.zeros(n, self.dim, dtype=torch.long, device=self.device)
        for d in self.order.tolist():
            idx[:, d] = sample_categorical(self.logits(self.codec.values(idx, self.dtype))[:, d], gens)
        return self.codec.to_data(idx)

    def likelihood(self, x: Tensor, *, method: str | None = None, num_levels: int | None = None,
                   generator: torch.Generator | None = None, class_labels: Tensor | None = None, **options):
        """The exact ``-log P(x)`` of the discrete data in nats and bits/dim (``kind="exact"``).

        This is the one dequantization's number (:func:`unidm.likelihood.dequantized_log_prob`) with equality: the
        density ``P(x) / Delta^D`` constant on each bin gives ``log p(x + u) + D log Delta = log P(x)`` for every
        ``u``, so no noise is drawn.
        """
        from ..likelihood import Likelihood, bits_per_dim

        self.check_likelihood(method, options)
        self.codec.check_levels(num_levels)
        with self.evaluating():
            log_prob = self.log_prob(x)
        return Likelihood(nll=-log_prob, bits_per_dim=bits_per_dim(log_prob, self.dim), kind="exact", nfe=1.0)

    # --- building from a run config --------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, model_cfg: dict, method_cfg: dict, data,
                    frozen: Mapping[str, TrainableModel] | None = None) -> "AutoregressiveModel":
        """Build for dataset ``data``: ``model`` holds the network sizes (:attr:`network_options`), ``method`` the
        other options; ``model.arch`` may only name the family itself."""
        codec = DiscreteData.from_dataset(data, cls.family)
        return cls(codec, **split_options(cls, model_cfg, method_cfg))


def split_options(cls, model_cfg: dict, method_cfg: dict) -> dict:
    """The constructor arguments of a family that builds its own network: ``model`` may hold only its
    ``network_options`` (and ``arch`` naming the family), ``method`` only its other options."""
    model = dict(model_cfg)
    arch = model.pop("arch", cls.family)
    if arch != cls.family:
        raise ValueError(f"model.arch={arch!r}: family {cls.family!r} builds its own network; drop model.arch "
                         f"(or set it to {cls.family!r})")
    names = [k for k in valid_kwargs(cls) if k != "codec"]
    net = [k for k in names if k in cls.network_options]
    for section, keys, opts in (("model", net, model), ("method", [k for k in names if k not in net], method_cfg)):
        bad = [k for k in opts if k not in keys]
        if bad:
            raise ValueError(f"unknown {section} option(s) {', '.join(map(repr, bad))} for family {cls.family!r}; "
                             f"valid: {', '.join(keys) or '(none)'}")
    return {**model, **method_cfg}


class FVSBN(AutoregressiveModel):
    """Fully visible sigmoid belief network (Frey 1998; Neal 1992): ``p(x_d | x_<d)`` is a logistic regression on
    ``x_<d`` (a softmax regression over ``K`` levels), ``logits_d = b_d + W_{d,<d} v_<d``: one strictly
    lower-triangular linear layer.

    >>> import torch
    >>> codec = DiscreteData("tokens", 2, (5,))
    >>> FVSBN(codec).logits(torch.zeros(3, 5)).shape
    torch.Size([3, 5, 2])
    """

    family = "fvsbn"
    sampler_seed_offset = 48_611

    def __init__(self, codec: DiscreteData):
        super().__init__(codec)
        d, k = self.dim, self.levels
        mask = (torch.arange(d)[:, None] > torch.arange(d)[None, :]).float().repeat_interleave(k, 0)
        self.linear = MaskedLinear(d, d * k, mask)
        nn.init.zeros_(self.linear.weight)

    def logits(self, v: Tensor) -> Tensor:
        return self.linear(v).reshape(len(v), self.dim, self.levels)


class NADE(AutoregressiveModel):
    """NADE (Larochelle & Murray 2011, eqs. 2-3): ``h_d = sigmoid(c + W_{:,<d} v_<d)``,
    ``logits_d = b_d + V_d h_d``, the input weights ``W [H, D]`` shared by every conditional. All ``D`` hidden
    vectors are computed at once, as one product with a strictly lower-triangular mask (the paper's running sum
    ``a_{d+1} = a_d + W_{:,d} v_d`` is ``O(DH)`` but sequential). The output ``V_d [H, K]`` is a softmax over the
    ``K`` levels (the paper's sigmoid for ``K = 2``).

    Args:
        hidden: ``H``, the hidden units (500 in the paper).
    """

    family = "nade"
    sampler_seed_offset = 49_139
    network_options = ("hidden",)

    def __init__(self, codec: DiscreteData, hidden: int = 500):
        super().__init__(codec)
        d, k = self.dim, self.levels
        self.W = nn.Parameter(torch.randn(hidden, d) / math.sqrt(d))
        self.c = nn.Parameter(torch.zeros(hidden))
        self.V = nn.Parameter(torch.randn(d, hidden, k) / math.sqrt(hidden))
        self.b = nn.Parameter(torch.zeros(d, k))

    def logits(self, v: Tensor) -> Tensor:
        below = torch.tril(torch.ones(self.dim, self.dim, dtype=v.dtype, device=v.device), -1)  # j < d
        h = torch.sigmoid(self.c + (v[:, None, :] * below) @ self.W.t())  # [B, D, H]: h_d of eq. 2
        return torch.bmm(h.transpose(0, 1), self.V).transpose(0, 1) + self.b


def made_masks(dim: int, hidden: Sequence[int], levels: int, generator: torch.Generator,
               natural: bool) -> tuple[Tensor, list[Tensor]]:
    """One MADE mask set (Germain et al. 2015, Sec. 4, eqs. 12-13): ``(order, masks)``.

    Input ``d`` gets degree ``m(d)`` = its place ``1 .. D`` in the ordering (natural, or a random permutation);
    hidden unit ``k`` of layer ``l`` a degree drawn uniformly from ``min m^{l-1} .. D - 1``; the mask from unit ``j``
    to unit ``k`` is ``m^l(k) >= m^{l-1}(j)`` between hidden layers and ``m(d) > m^L(j)`` into output ``d`` (its
    ``K`` logits). ``order`` lists the inputs by degree (the sampling order).
    """
    order = torch.arange(dim) if natural else torch.randperm(dim, generator=generator)
    degree = torch.empty(dim, dtype=torch.long)
    degree[order] = torch.arange(1, dim + 1)
    masks, prev = [], degree
    for h in hidden:
        low = int(prev.min())
        m = torch.randint(low, max(dim, low + 1), (h,), generator=generator)
        masks.append((m[:, None] >= prev[None, :]).float())
        prev = m
    masks.append((degree[:, None] > prev[None, :]).float().repeat_interleave(levels, 0))
    return order, masks


class MADE(AutoregressiveModel):
    """MADE (Germain et al. 2015): an MLP whose weights are masked so output ``d`` sees only the inputs before ``d``
    in an ordering (:func:`made_masks`), trained order- and connectivity-agnostically (Sec. 4.2).

    Mask set ``j`` (ordering and hidden connectivity) is a pure function of ``(mask_seed, j)``; set 0 has the natural
    ordering, the others a random one when ``order_agnostic``. Each training step draws one of the first
    ``num_masks`` sets; evaluation averages the probabilities of the first ``ensemble`` sets,
    ``log p(x) = log (1/K) sum_j p_j(x)`` (Sec. 4.2, "ensemble"), itself a normalized distribution (a mixture),
    which :meth:`sample` draws from by picking set ``j`` uniformly per sample.

    Args:
        hidden: units per hidden layer; depth: hidden layers.
        num_masks: mask sets cycled in training (1: a fixed MADE); ensemble: sets averaged at evaluation
            (<= num_masks); order_agnostic: random orderings (else every set is in the natural order);
            mask_seed: which mask sets.
    """

    family = "made"
    sampler_seed_offset = 49_727
    network_options = ("hidden", "depth")

    def __init__(self, codec: DiscreteData, hidden: int = 500, depth: int = 1, num_masks: int = 32,
                 ensemble: int = 8, order_agnostic: bool = True, mask_seed: int = 0):
        super().__init__(codec)
        for key, value in (("num_masks", num_masks), ("ensemble", ensemble), ("hidden", hidden), ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a whole number >= 1, got {value!r}")
        if ensemble > num_masks:
            raise ValueError(f"ensemble={ensemble} cannot average more mask sets than num_masks={num_masks}")
        self.num_masks, self.ensemble = num_masks, ensemble
        self.order_agnostic, self.mask_seed = bool(order_agnostic), int(mask_seed)
        sizes = [self.dim] + [hidden] * depth + [self.dim * self.levels]
        self.layers = nn.ModuleList(MaskedLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self._masks: dict[int, tuple[Tensor, list[Tensor]]] = {}
        self.order = self.mask_set(0)[0]

    def mask_set(self, j: int) -> tuple[Tensor, list[Tensor]]:
        """``(order, masks)`` of mask set ``j`` (cached)."""
        if j not in self._masks:
            g = torch.Generator().manual_seed(seed_for(self.mask_seed, "made", j))
            hidden = [layer.out_features for layer in self.layers[:-1]]
            self._masks[j] = made_masks(self.dim, hidden, self.levels, g, natural=j == 0 or not self.order_agnostic)
        order, masks = self._masks[j]
        return order, [m.to(self.device, self.dtype) for m in masks]

    def logits(self, v: Tensor, mask: int = 0) -> Tensor:
        """Logits ``[B, D, K]`` under mask set ``mask``."""
        masks = self.mask_set(mask)[1]
        h = v
        for layer, m in zip(self.layers[:-1], masks[:-1]):
            h = torch.relu(layer(h, m))
        return self.layers[-1](h, masks[-1]).reshape(len(v), self.dim, self.levels)

    def log_prob_mask(self, x: Tensor, mask: int) -> Tensor:
        """``log p_j(x) [B]`` under the single mask set ``j = mask``."""
        idx = self.codec.to_index(x).to(self.device)
        logits = self.logits(self.codec.values(idx, self.dtype), mask)
        return torch.log_softmax(logits, -1).gather(-1, idx[..., None]).squeeze(-1).sum(-1)

    def log_prob(self, x: Tensor) -> Tensor:
        """``log (1/K) sum_{j < K} p_j(x)`` over the ``K = ensemble`` first mask sets (exact, normalized)."""
        lp = torch.stack([self.log_prob_mask(x, j) for j in range(self.ensemble)])
        return torch.logsumexp(lp, 0) - math.log(self.ensemble)

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """``-log p_j(x) / D`` with one mask set ``j`` drawn per step from ``generator``."""
        device = generator.device if generator is not None else "cpu"
        j = int(torch.randint(self.num_masks, (1,), generator=generator, device=device))
        return -self.log_prob_mask(batch["x"], j) / self.dim

    @torch.no_grad()
    def sample(self, n: int, *, seeds: Sequence[int] | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """Ancestral samples of the ensemble: per sample a mask set ``j`` uniform over the first ``ensemble``, then
        coordinate by coordinate in set ``j``'s ordering."""
        gens = self.sample_generators(seeds, generator)
        pick = (rand((n,), gens, torch.float64) * self.ensemble).long().clamp_max(self.ensemble - 1).to(self.device)
        idx = torch.zeros(n, self.dim, dtype=torch.long, device=self.device)
        orders = torch.stack([self.mask_set(j)[0] for j in range(self.ensemble)]).to(self.device)  # [E, D]
        for t in range(self.dim):
            v = self.codec.values(idx, self.dtype)
            logits = torch.stack([self.logits(v, j) for j in range(self.ensemble)])  # [E, n, D, K]
            d = orders[pick, t]  # the coordinate each sample draws at step t
            rows = logits[pick, torch.arange(n, device=self.device), d]  # [n, K]
            idx[torch.arange(n, device=self.device), d] = sample_categorical(rows, gens)
        return self.codec.to_data(idx)

    def likelihood(self, x: Tensor, **kwargs):
        res = super().likelihood(x, **kwargs)
        res.nfe = float(self.ensemble)
        return res


AUTOREGRESSIVE_FAMILIES: dict[str, type[TrainableModel]] = {"fvsbn": FVSBN, "nade": NADE, "made": MADE}
