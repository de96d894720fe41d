"""Figures for feature visualization results (placeholder, being written)."""
