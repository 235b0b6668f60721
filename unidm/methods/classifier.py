"""Noise-conditional classifiers for classifier guidance."""

CLASSIFIER_FAMILIES: dict = {}
