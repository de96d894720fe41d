"""The audit: its summary figure (figures.py) and the static HTML report (html.py)."""
