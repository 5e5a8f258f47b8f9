"""Searching descriptors: exact and ScaNN search, the Index and its folder format, re-ranking."""
