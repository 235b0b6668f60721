"""Discrete and blur presets."""

PRESETS: dict = {}
