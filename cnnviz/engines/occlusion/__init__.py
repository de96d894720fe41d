"""Occlusion sensitivity (Zeiler & Fergus 2014): slide a gray square over the image and record how
the class score, its probability and a layer's strongest unit change.

  engine.py      `occlusion(lm, image, window=, stride=, mode=)`: positions, batching, the result
  incremental/   the incremental and approximate modes (only what the occluder changes is recomputed)

Imports only the core modules of cnnviz and `engines.common`.
"""

from .engine import occluded_batch, occluder_positions, occlusion  # noqa: F401 (the old import path)
