"""The dataset experiments' findings on a real network and real photos: EfficientNet-Lite0 on a
third of the ImageNet sample (166 photos, classes 0, 6, 12, ...), grouped into the coarse families
of cnnviz.taxonomy. The features are computed once for the module.

- linear probes (Zeiler & Fergus Table 7): accuracy rises with depth, from chance at the first
  convolution to far above it at the last layer;
- nearest neighbours (Krizhevsky et al. Fig. 4): a photo's nearest photos share its family far more
  often than random photos do;
- unit semantics (Zhou et al. 2015): many more units of a deep layer have top images of one family
  than chance allows, and few of the first layer's.
"""

import numpy as np
import pytest

import cnnviz
from cnnviz import taxonomy
from cnnviz.engines.features import depth_layers, pooled_features
from cnnviz.engines.neighbours import hit_rate
from cnnviz.engines.probe import fit_probe
from cnnviz.engines.semantics import semantics

from helpers import SAMPLE, sample_rows

pytestmark = pytest.mark.slow

ROWS = sample_rows()[::3]
FILES = [str(SAMPLE / "images" / r["file"]) for r in ROWS]
FAMILIES = [taxonomy.family(int(r["class_index"])) for r in ROWS]


@pytest.fixture(scope="module")
def lite0():
    return cnnviz.load_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def feats(lite0):
    return pooled_features(lite0, FILES, depth_layers(lite0), device="cpu", progress=False)


def test_probe_accuracy_rises_with_depth(feats):
    names = sorted(set(FAMILIES))
    counts = {n: FAMILIES.count(n) for n in names}
    keep = np.array([counts[f] >= 3 for f in FAMILIES])
    kept = sorted({f for f, k in zip(FAMILIES, keep) if k})
    y = np.array([kept.index(f) for f, k in zip(FAMILIES, keep) if k])
    acc = [fit_probe(feats.features[i.address][keep], y, len(kept), folds=3)[0].mean() for i in feats.layers]
    chance = np.bincount(y).max() / len(y)
    assert [i.address for i in feats.layers][0] == "_conv_stem" and feats.layers[-1].address == "_swish@1"
    assert acc[0] < chance + 0.1, acc  # the first convolution's colours and edges: about chance
    assert acc[-1] > chance + 0.3, (acc, chance)
    rank = np.corrcoef(np.argsort(np.argsort(acc)), np.arange(len(acc)))[0, 1]
    assert rank >= 0.9, acc  # (nearly) in order of depth


def test_neighbours_share_the_family_far_more_often_than_chance(feats):
    rate, chance = hit_rate(feats.features["_swish@1"], FAMILIES, 5)
    assert rate > 2.5 * chance, (rate, chance)
    first, _ = hit_rate(feats.features["_conv_stem"], FAMILIES, 5)
    assert first < rate - 0.15, (first, rate)


def test_deep_units_have_top_images_of_one_family_far_above_chance(lite0):
    labels = {r["file"]: r["class_index"] for r in ROWS}
    r = semantics(lite0, FILES, "_blocks.15", units="0:160", k=8, labels=labels, device="cpu", progress=False)
    p = r.params
    assert p["grouping"] == "family" and p["num_units"] == 160
    assert p["num_group_units"] >= 8 * p["expected_by_chance"], (p["num_group_units"], p["expected_by_chance"])
    assert p["mean_purity"] > p["chance_purity"] + 0.1, (p["mean_purity"], p["chance_purity"])
    import figure_checks

    figure_checks.check(r.render(), 7.0)
