"""Small helpers shared by every layer."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import Tensor

__all__ = ["as_options", "as_sigma_batch", "check_choice", "check_kwargs", "valid_kwargs"]


def as_sigma_batch(sigma: Tensor | float, x: Tensor) -> Tensor:
    """Broadcast a scalar or ``(B,)`` noise level to shape ``(B,)`` in ``x``'s dtype and device.

    >>> as_sigma_batch(0.5, torch.zeros(3, 2, dtype=torch.float64))
    tensor([0.5000, 0.5000, 0.5000], dtype=torch.float64)
    """
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape(x.shape[0])


def valid_kwargs(fn: Callable) -> list[str]:
    """Names of the keyword arguments ``fn`` accepts (empty list plus ``*`` if it takes ``**kwargs``)."""
    params = inspect.signature(fn).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_kwargs(fn: Callable, options: dict[str, Any], what: str, exclude: tuple[str, ...] = ()) -> None:
    """Raise ``ValueError`` naming the valid keys when ``options`` holds a key ``fn`` does not take."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return
    valid = [k for k in valid_kwargs(fn) if k not in exclude]
    bad = [k for k in options if k not in valid]
    if bad:
        raise ValueError(f"unknown {what}: {', '.join(map(repr, bad))}; valid: {', '.join(valid) or '(none)'}")


def as_options(value: Any, what: str) -> dict:
    """``value`` (a mapping or None) as a new dict; anything else is refused with a message that shows the form."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a mapping of option names to values, got {value!r}; on the command line "
                         f"set one entry as {what}.NAME=VALUE or the whole mapping as JSON, {what}='{{\"NAME\": VALUE}}'")
    return dict(value)


def check_choice(value: str, choices, what: str) -> str:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(sorted(choices))}")
    return value
