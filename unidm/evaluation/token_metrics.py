"""Metrics and pictures for token data."""

TOKEN_EVALUATORS: dict = {}
TOKEN_PLOTTERS: dict = {}
