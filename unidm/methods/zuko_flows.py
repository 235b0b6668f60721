"""MAF and neural spline flows for vector data, wrapped from zuko (an optional dependency: ``pip install
"unidm[flows]"``).

* ``maf``: masked autoregressive flow (Papamakarios et al. 2017): ``transforms`` MADE-conditioned affine
  autoregressive layers, the feature order reversed between layers (``zuko.flows.MAF``).
* ``nsf``: neural spline flow (Durkan et al. 2019): the same autoregressive conditioners driving monotonic
  rational-quadratic splines with ``bins`` bins on ``[-5, 5]`` and linear tails outside (``zuko.flows.NSF``).

Why wrap rather than rewrite: zuko (probabilists/zuko) is small, typed, pure PyTorch, depends on nothing but torch
and numpy, installs without touching the pinned CPU torch, and tests every flow's Jacobian against autograd; its
rational-quadratic spline (bin search, the inverse's quadratic root, the tails) is the part of a spline flow where
a rewrite would most likely go wrong. unidm adds what zuko leaves to the caller: the run folder, the trainer, the
per-seed sampling of :class:`~unidm.methods.flows.FlowModel` (the base noise is drawn by :mod:`unidm.rng` and carried
through zuko's inverse transform), and the one dequantization. Only zuko's transforms are used; the prior is
unidm's standard normal (zuko's base is the same ``N(0, I)``).

Example:
    >>> sorted(ZUKO_FAMILIES)  # with zuko installed: MAF(zuko_flow("maf", 2), data_shape=(2,)).log_prob(x)
    ['maf', 'nsf']
"""

from __future__ import annotations

from typing import Mapping, Sequence

from torch import Tensor, nn

from ..utils import check_kwargs
from .base import TrainableModel
from .flows import FlowModel

__all__ = ["ZukoMissing", "zuko_module", "zuko_flow", "ZukoFlow", "MAF", "NSF", "ZUKO_FAMILIES"]


class ZukoMissing(ImportError, ValueError):
    """zuko is not installed (a ``ValueError`` too, so the command line reports it in one line, exit 2)."""


def zuko_module():
    """The ``zuko`` package, or :class:`ZukoMissing` saying how to install it."""
    try:
        import zuko
    except ImportError:
        raise ZukoMissing('the maf and nsf families wrap zuko, which is not installed; install the optional extra: '
                          'pip install "unidm[flows]" (or pip install -e ".[flows]")') from None
    return zuko


def _maf_options(transforms: int = 4, hidden: int = 64, depth: int = 2) -> None:
    """Model options of ``maf``: ``transforms`` autoregressive layers, MADE conditioners of ``depth`` x ``hidden``."""


def _nsf_options(transforms: int = 4, hidden: int = 64, depth: int = 2, bins: int = 8) -> None:
    """Model options of ``nsf``: as ``maf``, and ``bins`` spline bins."""


_OPTIONS = {"maf": _maf_options, "nsf": _nsf_options}


def zuko_flow(kind: str, features: int, transforms: int = 4, hidden: int = 64, depth: int = 2,
              bins: int = 8) -> nn.Module:
    """``zuko.flows.MAF`` (``kind = "maf"``) or ``zuko.flows.NSF`` (``"nsf"``) on ``features`` dimensions, with
    the feature order reversed between layers (zuko's default) and conditioners of ``depth`` hidden layers of
    ``hidden`` units."""
    zuko = zuko_module()
    kwargs = {"transforms": transforms, "hidden_features": (hidden,) * depth}
    if kind == "maf":
        return zuko.flows.MAF(features, **kwargs)
    if kind == "nsf":
        return zuko.flows.NSF(features, bins=bins, **kwargs)
    raise ValueError(f"unknown zuko flow {kind!r}; valid: maf, nsf")


class ZukoFlow(FlowModel):
    """A zuko flow (``zuko.flows.Flow``) as a :class:`~unidm.methods.flows.FlowModel` on vectors ``(D,)``: its
    transform gives ``z = f(x)`` with ``log|det|`` (``call_and_ladj``) and ``f^-1``; the prior is ``N(0, I)``."""

    family = "zuko"

    def __init__(self, net: nn.Module, data_shape: Sequence[int] = (2,), num_levels: int | None = None):
        super().__init__(None, data_shape, num_levels)
        self.net = net

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.data_shape

    def transform(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.net().transform.call_and_ladj(x)

    def inverse(self, z: Tensor) -> Tensor:
        return self.net().transform.inv(z)

    @classmethod
    def from_config(cls, model_cfg: dict, method_cfg: dict, data,
                    frozen: Mapping[str, TrainableModel] | None = None) -> "ZukoFlow":
        """The zuko flow from the ``model`` section (``transforms``, ``hidden``, ``depth``, ``bins`` for nsf) for
        vector data; images are refused (use nice, realnvp or glow)."""
        cls.check_flow_data(data)
        if len(data.shape) != 1 or data.shape[0] < 2:
            raise ValueError(f"family {cls.family!r} takes vectors of at least 2 dimensions, got {data.name!r} of "
                             f"per-example shape {tuple(data.shape)}; for images use nice, realnvp or glow")
        if method_cfg:
            raise ValueError(f"unknown method option(s) {', '.join(map(repr, method_cfg))} for family "
                             f"{cls.family!r}; valid: (none)")
        model = dict(model_cfg)
        check_kwargs(_OPTIONS[cls.family], model, f"model option for family {cls.family!r}")
        levels = data.meta.get("levels")
        return cls(zuko_flow(cls.family, data.shape[0], **model), data_shape=data.shape,
                   num_levels=None if levels is None else int(levels))


class MAF(ZukoFlow):
    """Masked autoregressive flow (Papamakarios et al. 2017) through ``zuko.flows.MAF``."""

    family = "maf"


class NSF(ZukoFlow):
    """Autoregressive neural spline flow (Durkan et al. 2019) through ``zuko.flows.NSF``."""

    family = "nsf"


ZUKO_FAMILIES: dict[str, type[ZukoFlow]] = {cls.family: cls for cls in (MAF, NSF)}
