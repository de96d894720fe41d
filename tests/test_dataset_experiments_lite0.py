"""The dataset experiments' findings on a real network and real photos: EfficientNet-Lite0 on the
500-photo ImageNet sample, grouped into the 18 coarse families of cnnviz.taxonomy. One pass over
the photos, shared by the module: each layer's output averaged over positions at six depths, and
the spatial maximum of each unit of the last block (what the top-k scan ranks by). The engines
themselves are checked against independent computations on small models in test_probe.py,
test_neighbours.py and test_semantics.py; here, on real weights:

- linear probes (Zeiler & Fergus Table 7): accuracy rises with depth, from chance at the first
  convolution to far above it at the last layer;
- nearest neighbours (Krizhevsky et al. Fig. 4): a photo's nearest photos share its family far more
  often than random photos do, and more at the top than at the first layer;
- unit semantics (Zhou et al. 2015): many more units of the last block have top images of one
  family than chance allows.
"""

import numpy as np
import pytest

import cnnviz
from cnnviz import taxonomy
from cnnviz.engines.units.features import depth_layers, pooled_features
from cnnviz.engines.experiments.neighbours import hit_rate
from cnnviz.engines.experiments.probe import fit_probe
from cnnviz.engines.units.semantics import purity_p_values

from helpers import SAMPLE, sample_rows

pytestmark = pytest.mark.slow

ROWS = sample_rows()
FILES = [str(SAMPLE / "images" / r["file"]) for r in ROWS]
FAMILIES = [taxonomy.family(int(r["class_index"])) for r in ROWS]
UNITS_LAYER = "_blocks.15"


@pytest.fixture(scope="module")
def feats():
    lite0 = cnnviz.load_model("efficientnet_lite0")
    layers = [i.address for i in depth_layers(lite0)] + [UNITS_LAYER]
    return pooled_features(lite0, FILES, layers, pool={UNITS_LAYER: "max"}, device="cpu", progress=False)


def test_probe_accuracy_rises_with_depth(feats):
    names = taxonomy.families()
    y = np.array([names.index(f) for f in FAMILIES])
    layers = [i.address for i in feats.layers if i.address != UNITS_LAYER]
    assert layers[0] == "_conv_stem" and layers[-1] == "_swish@1"
    acc = [fit_probe(feats.features[a], y, len(names), folds=3)[0].mean() for a in layers]
    chance = np.bincount(y).max() / len(y)  # dogs: 59 of 500
    assert acc[0] < chance + 0.06, acc  # the first convolution's colours and edges: about chance
    assert acc[-1] > chance + 0.4, (acc, chance)
    assert all(b > a for a, b in zip(acc[1:], acc[2:])), acc  # rising, block after block
    assert acc[-1] == max(acc)


def test_neighbours_share_the_family_far_more_often_than_chance(feats):
    rate, chance = hit_rate(feats.features["_swish@1"], FAMILIES, 6)
    assert rate > 3 * chance, (rate, chance)
    first, _ = hit_rate(feats.features["_conv_stem"], FAMILIES, 6)
    assert first < rate - 0.1, (first, rate)


def test_deep_units_have_top_images_of_one_family_far_above_chance(feats):
    k = 10
    acts = feats.features[UNITS_LAYER]  # 500 x 320: each unit's spatial maximum per photo
    top = np.argsort(-acts, axis=0, kind="stable")[:k].T  # each unit's top-10 photos
    fam = np.array(FAMILIES)
    counts = np.array([max(np.unique(fam[row], return_counts=True)[1]) for row in top])
    names = sorted(set(FAMILIES))
    shares = np.array([FAMILIES.count(n) for n in names]) / len(FAMILIES)
    p, chance = purity_p_values(counts, np.full(len(counts), k), shares)
    significant = int((p < 0.01).sum())
    assert significant >= 5 * 0.01 * len(counts), significant  # 3.2 units expected by chance
    assert counts.mean() / k > chance + 0.04, (counts.mean() / k, chance)
