"""Image metrics and pictures."""

IMAGE_EVALUATORS: dict = {}
IMAGE_PLOTTERS: dict = {}
