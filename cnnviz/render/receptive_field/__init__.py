"""Figures of receptive fields: sizes per layer (sizes.py), theoretical vs effective vs
empirical (compare.py)."""
