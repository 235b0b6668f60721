"""Image networks."""

IMAGE_NETWORKS: dict = {}
