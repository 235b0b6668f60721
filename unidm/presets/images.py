"""Image presets."""

PRESETS: dict = {}
