"""Commands of the attribution family: one per method (methods.py), `compare` and `sanity`
(compare.py)."""
