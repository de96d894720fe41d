"""Commands that find what a model relies on: `strategies` (strategies.py), `tcav` (tcav.py)."""
