"""Commands of the data-set experiments: invariance, correspondence, evolution, simplify
(datasets.py); probe, neighbours, semantics (scans.py: each scans a data set's features);
scoremap (scoremap.py)."""
