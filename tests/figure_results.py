"""One small result of every kind cnnviz draws, from the real engines, for the figure-layout tests
(tests/test_figure_heights.py) and for looking at the figures (`python tests/figure_results.py DIR`
writes each at 7 in and 3.5 in and prints its size). Small inputs: EfficientNet-Lite0 on the bundled
photos where the photo's shape matters (the rocket is a portrait), random-weight torchvision
models and toy nets elsewhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from helpers import ASSETS, SAMPLE, random_model, twelve_photos


def _tiny_ckpts(folder: Path):
    """A small conv net, two checkpoints (seeds 0 and 1) and 8 random 16 x 16 images."""
    from PIL import Image

    from cnnviz.models import LoadedModel, Preprocessing

    def make():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(8, 3))

    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(data / f"d{i}.png")
    for seed in range(2):
        torch.manual_seed(seed)
        torch.save(make().state_dict(), folder / f"ckpt_{seed}.pt")
    torch.manual_seed(0)
    lm = LoadedModel(make(), "tiny", "random", Preprocessing(crop=(16, 16), resize=None), ["a", "b", "c"])
    return lm, str(folder / "ckpt_*.pt"), data


def _tcav(lm, folder: Path):
    """TCAV of two concepts (6 random 16 x 16 images each) for two classes of the toy net at three
    layers, random sets of 6 from 14 images: a figure of three panels."""
    from PIL import Image

    from cnnviz.engines.concepts.tcav import tcav

    rng = np.random.default_rng(1)
    for name, n in (("red", 6), ("noise", 6), ("pool", 14), ("data", 8)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            px = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            if name == "red":
                px[4:10, 4:10] = (230, 20, 20)
            Image.fromarray(px).save(folder / name / f"{i}.png")
    return tcav(lm, folder / "data", {"red square": folder / "red", "noise": folder / "noise"}, classes=["a", "b"],
                layers=["1", "3", "4"], random_from=folder / "pool", random_runs=10, random_size=6, device="cpu")


def build(tmp: Path, lite0=None) -> dict:
    """{name: (result, render options)} for every renderer cnnviz has (the audit's figures are
    the HTML report's, drawn by its own module)."""
    import torchvision

    import cnnviz
    from cnnviz.engines.attribution.gradients import attribute
    from cnnviz.engines.attribution.sanity import sanity
    from cnnviz.engines.experiments.correspondence import correspondence
    from cnnviz.engines.experiments.evolution import evolution
    from cnnviz.engines.experiments.invariance import invariance
    from cnnviz.engines.experiments.neighbours import neighbours
    from cnnviz.engines.experiments.probe import probe
    from cnnviz.engines.experiments.scoremap import scoremap
    from cnnviz.engines.experiments.simplify import simplify
    from cnnviz.engines.featvis import deep_dream, visualize_units
    from cnnviz.engines.receptive_field.theory import receptive_field
    from cnnviz.engines.units.filters import feature_maps, first_layer_filters
    from cnnviz.engines.units.patches import unit_patches
    from cnnviz.engines.units.semantics import semantics
    from cnnviz.engines.units.topk import scan

    lm = lite0 or cnnviz.load_model("efficientnet_lite0")
    rocket, cat, coffee = ASSETS / "rocket.jpg", ASSETS / "cat.jpg", ASSETS / "coffee.jpg"
    photos = tmp / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    for p in (rocket, cat, coffee):
        (photos / p.name).write_bytes(p.read_bytes())
    found = {}
    scan(lm, photos, "_blocks.6", units="0:3", k=2, progress=False, finish=lambda r: found.setdefault("r", r))
    out = {
        "occlusion": (cnnviz.occlusion(lm, rocket, window=64, stride=40, progress=False), {}),
        "gradients": (attribute(lm, [rocket, cat], "guided"), {}),
        "gradcam3": (attribute(lm, [rocket, cat, coffee], "gradcam"), {}),
        "compare": (cnnviz.compare(lm, rocket, methods=["saliency", "guided", "gradcam"])[0], {}),
        "sanity": (sanity(lm, rocket, methods=("saliency", "gradcam"), steps=2, classes=1), {}),
        "sanity_default": (sanity(lm, rocket, steps=2, classes=2), {}),
        "filters": (first_layer_filters(lm), {}),
        "activations": (feature_maps(lm, rocket, top=12), {}),
        "receptive_field": (receptive_field(lm), {}),
        "patches": (unit_patches(lm, found["r"], project=True), {}),
        "featvis": (visualize_units(lm, "_blocks.6", units="0:3", steps=2, size=48, progress=False), {}),
        "dream": (deep_dream(lm, rocket, "_blocks.4", size=64, octaves=1, steps=2), {"history": True}),
        "simplify": (simplify(lm, [rocket], n_segments=6, progress=False), {}),
        "scoremap": (scoremap(lm, rocket, scale=1.2, stride=64, progress=False), {}),
    }
    toy = nn.Sequential(nn.Conv2d(3, 16, 5, padding=2), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4)).eval()
    from cnnviz.models import LoadedModel, Preprocessing

    toy_lm = LoadedModel(toy, "toy", "random", Preprocessing(crop=(48, 48), resize=48), [f"k{i}" for i in range(4)])
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(4)]
    boxes = [[8, 8, 24, 24]] * 4
    out["correspondence"] = (correspondence(toy_lm, images, {"part": boxes}, layers=["1", "3"], draws=3, seed=0,
                                            device="cpu"), {})
    out["invariance"] = (invariance(toy_lm, images[:2], layers=["1", "3"], device="cpu"), {})
    lm_ev, ckpts, data = _tiny_ckpts(tmp / "evolution")
    out["evolution"] = (evolution(lm_ev, ckpts, data, "4", units="0:4", device="cpu", show_progress=False),
                        {"patches": True})
    out["tcav"] = (_tcav(lm_ev, tmp / "tcav"), {})
    if (SAMPLE / "labels.csv").is_file():
        _, files, labels = twelve_photos()
        alex = random_model(torchvision.models.alexnet, 5, crop=80, resize=90)
        out["neighbours"] = (neighbours(alex, files[:2], files, "features.8", k=3, device="cpu", progress=False), {})
        res = random_model(torchvision.models.resnet18, 7, crop=64, resize=73)
        out["semantics"] = (semantics(res, files, "layer2", units="0:6", k=4, labels=labels, batch_size=4,
                                      device="cpu", progress=False), {})
        out["probe"] = (probe(res, files, layers=["layer1", "layer2"], labels=labels, folds=2, device="cpu",
                              progress=False), {})
        from cnnviz.engines.concepts.strategies import strategies

        table = tmp / "strategies.csv"  # two classes of 6 photos each, named by label (SpRAy's minimum)
        table.write_text("file,label\n" + "".join(f"{f},{'goldfinch' if i < 6 else 'daisy'}\n"
                                                   for i, f in enumerate(files)))
        out["strategies"] = (strategies(lm, str(table), device="cpu", progress=False), {})
    return out


def draw_all(results: dict, dest: Path) -> None:
    """Each result's figure at 7 in (row) and 3.5 in (row and grid) as PNG in `dest`, with its size."""
    import matplotlib.pyplot as plt

    dest.mkdir(parents=True, exist_ok=True)
    for name, (r, opts) in results.items():
        for width, layout in ((7.0, "row"), (3.5, "row"), (3.5, "grid")):
            fig = r.render(dest / f"{name}_{width:g}_{layout}.png", width=width, layout=layout, **opts)
            print(f"{name:16s} {width:4g} {layout:4s} {fig.get_figwidth():5.2f} x {fig.get_figheight():5.2f} in",
                  flush=True)
            plt.close(fig)


if __name__ == "__main__":
    # python tests/figure_results.py build RESULTS_DIR | draw RESULTS_DIR PNG_DIR
    import json
    import sys
    import tempfile

    import matplotlib

    matplotlib.use("Agg")
    sys.path.insert(0, str(Path(__file__).parent))
    step, folder = sys.argv[1], Path(sys.argv[2])
    if step == "build":
        folder.mkdir(parents=True, exist_ok=True)
        built = build(Path(tempfile.mkdtemp()))
        for name, (r, opts) in built.items():
            r.save(folder / f"{name}.npz")
        (folder / "options.json").write_text(json.dumps({k: o for k, (_, o) in built.items()}))
        print("built", list(built), flush=True)
    else:
        from cnnviz import load_result

        opts = json.loads((folder / "options.json").read_text())
        only = set(sys.argv[4:])
        draw_all({k: (load_result(folder / f"{k}.npz"), o) for k, o in opts.items() if not only or k in only},
                 Path(sys.argv[3]))
