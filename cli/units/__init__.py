"""Commands of the unit analyses: `topk` (topk.py), `filters` and `activations` (filters.py)."""
