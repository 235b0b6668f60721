"""Sequence networks."""

SEQUENCE_NETWORKS: dict = {}
