"""Masked (absorbing) discrete diffusion."""

MASKED_FAMILIES: dict = {}
