"""Regenerate the README figures of `cnnviz correspondence`, `evolution` and `simplify`:

    python assets/figures/make_zf_figures.py [correspondence] [evolution] [simplify]

The photos come from the ImageNet sample (../shared/data/imagenet-sample, or
$CNNVIZ_IMAGENET_SAMPLE); evolution trains a tiny CNN on scikit-learn's digits for 8 epochs in a
temporary folder (checkpoint after each) and runs the command on it. Each step prints its figures.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SAMPLE = Path(os.environ.get("CNNVIZ_IMAGENET_SAMPLE") or REPO.parent / "shared" / "data" / "imagenet-sample")
if not (SAMPLE / "labels.csv").is_file():
    SAMPLE = Path("/work/shared/data/imagenet-sample")
DOGS = ["152_n02085782.jpg", "162_n02088364.jpg", "194_n02096437.jpg", "198_n02097209.jpg", "206_n02099429.jpg"]
SIMPLIFY = ["000_n01440764.jpg", "008_n01514859.jpg", "094_n01833805.jpg"]
DIGITS_NET = '''from torch import nn


def digits_cnn():
    """A tiny CNN for scikit-learn's 8 x 8 digits, shown at 32 x 32 (layer 7: the third conv's ReLU,
    a 20-pixel receptive field)."""
    return nn.Sequential(nn.Conv2d(3, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
'''


def cnnviz(*args: str) -> None:
    cmd = ["cnnviz", *args]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def correspondence() -> None:
    cnnviz("correspondence", *[str(SAMPLE / "images" / f) for f in DOGS], "--parts", str(REPO / "assets" / "dog_parts.json"),
           "--random-within", "head", "--draws", "50", "--out", str(HERE / "correspondence_dogs.png"))


def evolution() -> None:
    import numpy as np
    import torch
    from PIL import Image
    from sklearn.datasets import load_digits

    from cnnviz.models import Preprocessing

    tmp = Path(tempfile.mkdtemp(prefix="cnnviz_digits_"))
    (tmp / "net.py").write_text(DIGITS_NET)
    d = load_digits()
    side = 32
    pixels = np.stack([np.asarray(Image.fromarray((im * 255 / 16).astype(np.uint8)).resize((side, side),
                                                                                          Image.Resampling.BILINEAR))
                       for im in d.images])
    pixels = np.repeat(pixels[..., None], 3, axis=3)
    (tmp / "data").mkdir()
    for i in range(0, len(pixels), 3):  # a third of the set is scanned
        Image.fromarray(pixels[i]).save(tmp / "data" / f"d{i:04d}.png")
    ns: dict = {}
    exec(DIGITS_NET, ns)  # noqa: S102 (this file's own model)
    torch.manual_seed(0)
    model = ns["digits_cnn"]()
    x, y = Preprocessing(crop=(side, side), resize=None).normalize(pixels), torch.as_tensor(d.target)
    torch.save(model.state_dict(), tmp / "ckpt_0.pt")
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    for epoch in range(1, 9):
        for idx in torch.randperm(len(x), generator=gen).split(32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        torch.save(model.state_dict(), tmp / f"ckpt_{epoch}.pt")
        with torch.no_grad():
            print(f"epoch {epoch}: training accuracy {float((model(x).argmax(1) == y).float().mean()):.3f}")
    shown = [str(tmp / f"ckpt_{e}.pt") for e in (0, 1, 2, 4, 8)]  # as ZF's epochs 1, 2, 5, 10, ...
    cnnviz("evolution", "--model", f"{tmp / 'net.py'}:digits_cnn", "--checkpoints", *shown,
           "--layer", "7", "--units", "0:8", "--input-size", str(side), str(tmp / "data"), "--patches",
           "--out", str(HERE / "evolution_digits.png"))


def simplify() -> None:
    cnnviz("simplify", *[str(SAMPLE / "images" / f) for f in SIMPLIFY], "--segments", "40",
           "--out", str(HERE / "simplify.png"))


if __name__ == "__main__":
    steps = sys.argv[1:] or ["correspondence", "evolution", "simplify"]
    for step in steps:
        globals()[step]()
