"""Figures of the data-set experiments, one module per experiment, named as in
`cnnviz.engines.experiments`."""
