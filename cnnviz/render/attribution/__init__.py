"""Figures of attribution results: one map per method and image (gradients.py), methods side by
side (compare.py), the sanity checks' cascade (sanity.py)."""
