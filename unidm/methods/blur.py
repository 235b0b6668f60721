"""Blur diffusion (inverse heat dissipation)."""

BLUR_FAMILIES: dict = {}
