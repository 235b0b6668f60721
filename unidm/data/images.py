"""Image datasets (owned by the images work): name -> builder returning a Dataset."""

IMAGE_DATASETS: dict = {}
