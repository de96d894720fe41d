"""Figures of unit analyses: top-k patches and their projections (patches.py), filters and
feature maps (filters.py), unit labels (semantics.py)."""
