"""The papers' experiments over a data set.

  invariance.py      feature distance and class probability under translation, scale, rotation (ZF Fig. 5)
  correspondence.py  does occluding the same part change the features alike across images (ZF Table 1)
  evolution.py       each unit's strongest activation at each training checkpoint (ZF Fig. 4)
  probe.py           linear-probe accuracy per layer (ZF Table 7 / Fig. 9)
  simplify.py        remove superpixels while the class holds (Zhou et al. 2015)
  neighbours.py      nearest images in a layer's feature space (Krizhevsky et al. Fig. 4)
  scoremap.py        the class score at every position of a large photo
  datasets.py        listing a data set's images

Imports the core modules of cnnviz, `engines.common` and the unit analyses (`engines.units`).
"""
