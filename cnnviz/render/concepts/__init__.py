"""Figures of what a model relies on: strategy clusters (strategies.py), concept scores (tcav.py)."""
