"""Discrete datasets (token sequences): name -> builder returning a Dataset."""

DISCRETE_DATASETS: dict = {}
