"""Guidance presets (noise-conditional classifiers, conditional models)."""

PRESETS: dict = {}
