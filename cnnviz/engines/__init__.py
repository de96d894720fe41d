"""The engines: each computes one kind of result from a model and images, and draws nothing.

One sub-package per family of analysis:

  attribution/      which pixels a class score or a unit depends on: saliency, guided backprop,
                    the deconvnet, integrated gradients, SmoothGrad, the CAM family, RISE, LRP,
                    and the sanity checks of Adebayo et al. (the backward rules live here too)
  occlusion/        occlusion sensitivity, full and incremental (Zeiler & Fergus; Nakandala et al.)
  receptive_field/  theoretical, effective (gradient) and empirical (occlusion) receptive fields
  units/            what single units respond to: top-k images and patches, filters and feature
                    maps, unit labels (semantics), the features a data set is scanned for
  featvis/          feature visualization, class models, DeepDream and inversion (gradient ascent)
  experiments/      the papers' data-set experiments: invariance, correspondence, evolution,
                    linear probes, simplification, nearest neighbours, score maps
  concepts/         what a model relies on: strategy clusters (SpRAy), concept tests (TCAV),
                    planted shortcuts
  audit/            the one-command report over a data set

What each may import: the core modules of `cnnviz` (models, layers, images, batching, results, ...)
and `engines.common`; a family may use another family's engine (an audit runs attribution and
occlusion), never the renderers (`cnnviz.render`) or the command line. No import circles (a test
reads the imports).
"""
