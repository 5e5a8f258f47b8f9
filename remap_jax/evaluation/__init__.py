"""Scoring rankings: metrics, query expansion, running a model on a benchmark, scoring files."""
