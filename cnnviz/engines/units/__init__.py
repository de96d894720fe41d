"""What single units respond to.

  topk.py       the k images (and positions) that activate each unit of a layer most, over a data set
  patches.py    those positions cropped and projected back to pixels (Zeiler & Fergus Fig. 2)
  filters.py    the first layer's filters as images, and a layer's feature maps for one image
  semantics.py  a label for each unit from its top images (Zhou et al. 2015, Bau et al. 2017)
  features.py   pooled features of a data set's images, and its labels (shared by the experiments)

Imports the core modules of cnnviz, `engines.common` and `engines.attribution` (projections).
"""
