"""The coarse ImageNet families: every class in exactly one, the families match the class names
(checked against words in the names, not against the table), and the chance formula against a
simulation."""

import numpy as np
import pytest

from cnnviz import taxonomy
from cnnviz.sources.torchvision import imagenet_categories
from helpers import sample_image


def test_every_class_has_one_family_and_the_families_are_coarse():
    fams = taxonomy.families()
    assert 10 <= len(fams) <= 20 and len(set(fams)) == len(fams)
    counts = {f: len(taxonomy.members(f)) for f in fams}
    assert sum(counts.values()) == 1000 and min(counts.values()) >= 10
    assert all(fams[taxonomy.family_index(i)] == taxonomy.family(i) for i in range(1000))


@pytest.mark.parametrize("words, family", [
    (("terrier", "spaniel", "retriever", "poodle", "hound", "setter", "collie", "schnauzer"), "dogs"),
    (("truck", "bus", "boat", "locomotive", "car", "ship", "airliner", "van", "bike"), "vehicles"),
    (("beetle", "butterfly", "spider", "crab", "snail", "bee", "ant", "fly"), "invertebrates"),
    (("snake", "lizard", "turtle", "frog", "salamander", "gecko", "viper", "boa"), "reptiles & amphibians"),
    (("guitar", "violin", "piano", "trumpet", "drum", "flute", "harp", "oboe"), "musical instruments"),
    (("shop", "church", "bridge", "castle", "palace", "mosque", "tower", "fence"), "buildings & structures"),
])
def test_the_families_agree_with_the_words_in_the_class_names(words, family):
    names = imagenet_categories()
    hits = [i for i, n in enumerate(names) if n.lower().split()[-1] in words]
    assert len(hits) >= 8
    agree = np.mean([taxonomy.family(i) == family for i in hits])
    assert agree >= 0.85, [(names[i], taxonomy.family(i)) for i in hits if taxonomy.family(i) != family]


def test_chance_is_the_probability_that_two_random_classes_share_a_family():
    classes = list(range(0, 1000, 7))
    rng = np.random.default_rng(0)
    a, b = rng.choice(classes, 20000), rng.choice(classes, 20000)
    simulated = np.mean([taxonomy.family(x) == taxonomy.family(y) for x, y in zip(a, b)])
    assert taxonomy.chance(classes) == pytest.approx(simulated, abs=0.01)


@pytest.mark.parametrize("bad", [-1, 1000, 2.5, "dog"])
def test_a_class_outside_imagenet_is_a_one_line_error(bad):
    with pytest.raises(ValueError, match="class index") as e:
        taxonomy.family(bad)
    assert "\n" not in str(e.value)


def test_the_kept_imagenet_class_names_equal_torchvisions():
    """cnnviz keeps the 1000 class names so that Lite0 and timm models load without importing
    torchvision.models: they must stay torchvision's, index for index."""
    from torchvision.models import AlexNet_Weights, ResNet50_Weights

    assert imagenet_categories() == list(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])
    assert imagenet_categories() == list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def test_lite0_loads_and_runs_without_importing_torchvision():
    """About 2 s of every Lite0 command's start: the class names and the provenance's torchvision
    version are had without importing it."""
    import subprocess
    import sys

    code = ("import sys, cnnviz; lm = cnnviz.load_model('efficientnet_lite0'); "
            "assert lm.class_name(657) == 'missile', lm.class_name(657); "
            "r = cnnviz.occlusion(lm, sys.argv[1], window=112, stride=112, progress=False); "
            "import importlib.metadata as md; "
            "assert r.provenance['torchvision_version'] == md.version('torchvision'), r.provenance; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torchvision'))")
    out = subprocess.run([sys.executable, "-c", code, str(sample_image(4))], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
