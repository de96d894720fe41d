"""Attribution: which pixels a class score (or one unit) depends on.

  gradients.py   `attribute(lm, images, method)`: the one entry point; runs any method below
  api.py         `cnnviz.gradcam(...)` and the other method functions (from the table), `compare`
  methods.py     the method table (name, backward rule, units, flags); `cnnviz.<method>` comes from it
  rules.py       backward rules: plain gradient, guided backprop, the deconvnet (Zeiler & Fergus),
                 and how they compose per layer
  targets.py     what is explained: a class score or a unit, and the seed sent down
  ig.py          integrated gradients (baselines)
  cams.py        Grad-CAM++, LayerCAM, Score-CAM and RISE
  lrp.py         layer-wise relevance propagation (epsilon, z+, alpha-beta) and its relevance ledger
  deconvnet.py   the deconvnet with unpooling switches on plain sequential models
  dependence.py  whether a map depends on the image at all (the gray-image check)
  sanity.py      the model-randomization sanity checks of Adebayo et al. (2018)

Imports only the core modules of cnnviz and `engines.common`.
"""
