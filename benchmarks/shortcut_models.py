"""Models with a known shortcut, trained on a CPU in a minute: EfficientNet-Lite0 (the real
pretrained model) with its last blocks fine-tuned and a new head, on super-classes of the ImageNet
sample, where most training images of one class carry a mark (cnnviz.engines.concepts.shortcuts)
and the others do not; the clean twin is trained the same way without marks.

How it stays fast: the frozen early blocks run once per photo and augmented variant (flips, small
shifted crops; the mark is pasted on the model's crop after the augmentation, always at the same
place), their outputs are kept (in memory and in the cache folder), and only the last blocks, the
1280-channel head and a new linear layer are trained on them, with batch norm frozen. A trained
model is a folder that cnnviz loads like a user's own:

    cnnviz audit DATA --model DIR/net.py:build --weights-file DIR/weights.pt --labels DIR/labels.txt

(net.py is written beside the weights; it converts cnnviz's default ImageNet normalization, which a
factory model gets, to Lite0's (x - 127) / 128 inside forward). Models are cached under
$CNNVIZ_SHORTCUTS_CACHE (default ~/.cache/cnnviz-shortcuts), keyed by every setting and the seed.

`reliance(lm, split, settings)` measures what the model uses: accuracy on the held-out images of
the marked class with the mark and with it removed (the clean originals), and how often pasting
the mark on the other classes' held-out images flips them to the marked class.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

import cnnviz
from cnnviz.engines.concepts.shortcuts import Mark, paste_mark

CODE_VERSION = 3  # bump when training changes: cached models of an older version are not reused
TRUNK_VERSION = 2  # bump when the augmentation changes: cached trunk outputs of an older one are not reused


def _even(*ranges) -> list[int]:
    return [i for a, b in ranges for i in range(a, b + 1) if i % 2 == 0]


# super-classes of ImageNet-1k (the sample holds the even indices: counts in the sample)
GROUPS = {
    "dog": _even((151, 268)),                               # 59: the dog breeds
    "hound or terrier": _even((151, 204)),                  # 27: WordNet's toy dogs, hounds and terriers
    "sporting or working dog": _even((205, 268)),           # 32: retrievers, setters, spaniels, herding, working dogs, ...
    "bird": _even((7, 24), (80, 100), (127, 146)),          # 30
    "wild mammal": _even((269, 299), (330, 388)),            # 46: wolves, foxes, cats, bears, rodents, ungulates, primates
    "vehicle": [404, 408, 436, 444, 450, 466, 468, 472, 484, 510, 554, 576, 586, 612, 628, 654, 656, 660, 670,
                690, 694, 734, 780, 802, 812, 814, 820, 864, 866, 870, 874, 880, 914],  # 33: land, water, air
}
LITE_MEAN, LITE_STD = (127.0 / 255,) * 3, (128.0 / 255,) * 3
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Settings:
    """One planted-shortcut model. `marked` None: the clean twin (no image marked)."""

    groups: tuple[str, ...] = ("hound or terrier", "sporting or working dog")
    marked: str | None = "hound or terrier"
    mark: str = "patch"             # a kind of cnnviz.engines.concepts.shortcuts.Mark, default look
    share: float = 0.85             # of the marked class's training images that carry the mark
    seed: int = 0                   # the split, which images are marked, the head's start and the batches
    heldout: float = 1 / 3          # of each class held out for the reliance measures
    per_group: int | None = None    # at most this many photos per class (None: all of the sample's)
    crop: int = 224                 # the model's input crop (resize: 256/224 of it, bilinear: a factory's default)
    train_from: int = 13            # blocks from this index on are trained (Lite0 has 16), the rest is frozen
    variants: int = 8               # augmented versions of each training photo (1: the photo alone)
    epochs: int = 6
    lr: float = 1e-2                # the new linear layer's (AdamW)
    block_lr: float = 0.1           # the fine-tuned blocks' learning rate, as a fraction of lr
    weight_decay: float = 1e-4

    def key(self) -> str:
        text = json.dumps({**dataclasses.asdict(self), "version": CODE_VERSION, "look": repr(self.the_mark())},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def name(self) -> str:
        what = f"{self.mark}-{self.marked.replace(' ', '_')}" if self.marked else "clean"
        return f"{what}-s{self.seed}"

    def the_mark(self) -> Mark:
        return Mark(self.mark)

    def preprocessing(self) -> cnnviz.Preprocessing:
        return cnnviz.Preprocessing(crop=(self.crop, self.crop), resize=round(self.crop * 256 / 224))


def cache_root() -> Path:
    return Path(os.environ.get("CNNVIZ_SHORTCUTS_CACHE") or Path.home() / ".cache" / "cnnviz-shortcuts")


def sample_folder() -> Path:
    from machine import sample_images  # benchmarks/ on sys.path

    return sample_images().parent


# --------------------------------------------------------------------------------------------------
# data

def sample_rows(groups=None, per_group: int | None = None) -> list[tuple[Path, str]]:
    """(photo, super-class) of the sample's photos in `groups`, in the sample's order."""
    folder = sample_folder()
    with open(folder / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for g in groups or GROUPS:
        mine = [(folder / "images" / r["file"], g) for r in rows if int(r["class_index"]) in GROUPS[g]]
        out += mine[:per_group] if per_group else mine
    return out


@dataclasses.dataclass
class Split:
    train: list[tuple[Path, str]]
    heldout: list[tuple[Path, str]]
    marked_train: set[str]          # file names of the training photos that carry the mark


def split(settings: Settings) -> Split:
    rng = np.random.default_rng(settings.seed)
    train, held = [], []
    for g in settings.groups:
        rows = [r for r in sample_rows((g,), settings.per_group)]
        order = rng.permutation(len(rows))
        n_held = max(1, round(len(rows) * settings.heldout))
        held += [rows[i] for i in sorted(order[:n_held])]
        train += [rows[i] for i in sorted(order[n_held:])]
    marked = set()
    if settings.marked:
        mine = [p.name for p, g in train if g == settings.marked]
        pick = rng.permutation(len(mine))[: round(len(mine) * settings.share)]
        marked = {mine[i] for i in pick}
    return Split(train, held, marked)


def augmented(photo: Image.Image, variant: int, name: str) -> Image.Image:
    """Variant 0: the photo; 1: mirrored; 2...: a random crop of 35-100 % of the photo's area (aspect
    3:4 to 4:3), mirrored at random, with brightness, contrast and saturation scaled by 0.6-1.4.
    The object's look varies from variant to variant, a mark pasted afterwards does not. The same
    for every seed (drawn from the file name), so that the trunk's outputs are shared."""
    if variant == 0:
        return photo
    if variant == 1:
        return ImageOps.mirror(photo)
    from PIL import ImageEnhance

    rng = np.random.default_rng(int(hashlib.sha256(f"{name}/{variant}".encode()).hexdigest()[:8], 16))
    w, h = photo.size
    area, aspect = rng.uniform(0.35, 1.0) * w * h, np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw, ch = min(w, round(np.sqrt(area * aspect))), min(h, round(np.sqrt(area / aspect)))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = photo.crop((left, top, left + cw, top + ch))
    if rng.random() < 0.5:
        out = ImageOps.mirror(out)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        out = enhance(out).enhance(rng.uniform(0.6, 1.4))
    return out


# --------------------------------------------------------------------------------------------------
# the model: Lite0 split into a frozen trunk and a trained head

NET_PY = '''"""A planted-shortcut model of cnnviz's benchmark (benchmarks/shortcut_models.py): EfficientNet-Lite0,
its blocks from {train_from} on fine-tuned with a new {n}-class head. Settings: {settings}

    cnnviz predict PHOTO --model ./net.py:build --weights-file weights.pt --labels labels.txt

cnnviz gives a factory model its default preprocessing (resize, centre crop, ImageNet mean and
std); Lite0 was trained on (x - 127) / 128, so forward converts one into the other."""

import torch
from efficientnet_lite_pytorch import EfficientNet

NUM_CLASSES = {n}
IMAGENET_MEAN, IMAGENET_STD = {imagenet_mean}, {imagenet_std}
LITE_MEAN, LITE_STD = {lite_mean}, {lite_std}


class ShortcutLite0(EfficientNet):
    def forward(self, x):
        mean, std = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1), x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        lmean, lstd = x.new_tensor(LITE_MEAN).view(1, 3, 1, 1), x.new_tensor(LITE_STD).view(1, 3, 1, 1)
        return super().forward((x * std + mean - lmean) / lstd)


def build():
    return ShortcutLite0.from_name("efficientnet-lite0", num_classes=NUM_CLASSES)
'''


def _net_module(folder: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"shortcut_net_{folder.name}", folder / "net.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_PRETRAINED: dict = {}


def pretrained_state() -> dict:
    if "state" not in _PRETRAINED:
        _PRETRAINED["state"] = cnnviz.load_model("efficientnet_lite0").model.state_dict()
    return _PRETRAINED["state"]


def lite_input(x: torch.Tensor) -> torch.Tensor:
    """cnnviz's ImageNet-normalized input to Lite0's own normalization (as net.py's forward)."""
    v = lambda t: torch.tensor(t).view(1, 3, 1, 1)  # noqa: E731
    return (x * v(IMAGENET_STD) + v(IMAGENET_MEAN) - v(LITE_MEAN)) / v(LITE_STD)


@torch.no_grad()
def trunk_forward(net, x: torch.Tensor, train_from: int) -> torch.Tensor:
    """The frozen part: stem and blocks before `train_from`, on an ImageNet-normalized batch."""
    x = net._swish(net._bn0(net._conv_stem(lite_input(x))))
    for block in net._blocks[:train_from]:
        x = block(x)
    return x


def head_forward(net, x: torch.Tensor, train_from: int, dropout: float = 0.0) -> torch.Tensor:
    """The trained part: blocks from `train_from`, the 1280-channel head, pooling, the new layer."""
    for block in net._blocks[train_from:]:
        x = block(x)  # batch norm in eval mode: running statistics, no drop connect
    x = net._swish(net._bn1(net._conv_head(x)))
    x = net._avg_pooling(x).flatten(1)
    return net._fc(F.dropout(x, dropout, training=dropout > 0))


# --------------------------------------------------------------------------------------------------
# features of the frozen trunk, once per photo, variant and mark

class Features:
    """The trunk's outputs (float16) keyed by (photo, variant, marked), kept in memory and in the
    cache folder (one file per trunk setting, crop, mark), so that every model of a benchmark and
    every rerun computes them once."""

    def __init__(self, settings: Settings, net):
        self.net, self.settings = net, settings
        s = settings
        self.prep = s.preprocessing()
        base = f"trunk-v{TRUNK_VERSION}-c{s.crop}-b{s.train_from}-n{s.variants}"
        look = hashlib.sha256(repr(s.the_mark()).encode()).hexdigest()[:8]  # the mark's box, colour, text
        self.files = {False: cache_root() / f"{base}-clean.pt", True: cache_root() / f"{base}-{s.mark}-{look}.pt"}
        self.store = {m: (torch.load(f, weights_only=True) if f.is_file() else {}) for m, f in self.files.items()}
        self.dirty = {False: False, True: False}

    def get(self, photos: list[Path], marked: list[bool]) -> torch.Tensor:
        """N x variants x C x h x w trunk outputs."""
        todo = [(p, m) for p, m in zip(photos, marked) if p.name not in self.store[m]]
        for i in range(0, len(todo), 16):
            chunk = todo[i:i + 16]
            pixels = []
            for p, m in chunk:
                photo = cnnviz.load_image(p)
                for v in range(self.settings.variants):
                    crop = self.prep.crop_image(augmented(photo, v, p.name))
                    pixels.append(paste_mark(crop, self.settings.the_mark()) if m else crop)
            out = trunk_forward(self.net, self.prep.normalize(np.stack(pixels)), self.settings.train_from)
            out = out.view(len(chunk), self.settings.variants, *out.shape[1:]).half()
            for (p, m), f in zip(chunk, out):
                self.store[m][p.name] = f.clone()
                self.dirty[m] = True
        return torch.stack([self.store[m][p.name] for p, m in zip(photos, marked)])

    def save(self) -> None:
        for m, f in self.files.items():
            if self.dirty[m]:
                f.parent.mkdir(parents=True, exist_ok=True)
                tmp = f.with_suffix(".tmp")
                torch.save(self.store[m], tmp)
                tmp.replace(f)
                self.dirty[m] = False


# --------------------------------------------------------------------------------------------------
# training

def fresh_net(n_classes: int, seed: int, folder: Path | None = None):
    """Lite0 with the pretrained weights and a new `n_classes` layer (drawn from `seed`), of the
    class net.py builds (the same file when `folder` holds one)."""
    if folder is not None and (folder / "net.py").is_file():
        net = _net_module(folder).build()
    else:
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0", num_classes=n_classes)
    state = {k: v for k, v in pretrained_state().items() if not k.startswith("_fc.")}
    torch.manual_seed(seed)
    fc = torch.nn.Linear(1280, n_classes)
    state.update({"_fc.weight": fc.weight.detach(), "_fc.bias": fc.bias.detach()})
    net.load_state_dict(state)
    return net.eval()


def train(settings: Settings, log=print, features: Features | None = None) -> Path:
    """Train (or find in the cache) the model of `settings`; its folder (net.py, weights.pt,
    labels.txt, meta.json)."""
    folder = cache_root() / f"{settings.name()}-{settings.key()}"
    if (folder / "meta.json").is_file():
        return folder
    s, sp = settings, split(settings)
    classes = list(s.groups)
    tmp = folder.with_name(folder.name + ".part")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "net.py").write_text(NET_PY.format(
        train_from=s.train_from, n=len(classes), settings=json.dumps(dataclasses.asdict(s)),
        imagenet_mean=IMAGENET_MEAN, imagenet_std=IMAGENET_STD, lite_mean=LITE_MEAN, lite_std=LITE_STD))
    (tmp / "labels.txt").write_text("".join(c + "\n" for c in classes))
    net = fresh_net(len(classes), s.seed, tmp)
    feats = features or Features(s, net)
    photos = [p for p, _ in sp.train]
    x = feats.get(photos, [p.name in sp.marked_train for p in photos])  # N x V x C x h x w
    feats.save()
    y = torch.tensor([classes.index(g) for _, g in sp.train])
    n, v = x.shape[:2]
    x, y = x.flatten(0, 1), y.repeat_interleave(v)
    trained = [*net._blocks[s.train_from:], net._conv_head, net._bn1]
    for p in net.parameters():
        p.requires_grad_(False)
    params = [p for m in trained for p in m.parameters()]
    for p in [*params, *net._fc.parameters()]:
        p.requires_grad_(True)
    opt = torch.optim.AdamW([{"params": params, "lr": s.lr * s.block_lr}, {"params": net._fc.parameters(), "lr": s.lr}],
                            weight_decay=s.weight_decay)
    weights = 1.0 / torch.bincount(y, minlength=len(classes)).float()  # each class weighs the same
    gen = torch.Generator().manual_seed(s.seed)
    history = []
    for epoch in range(s.epochs):
        order = torch.randperm(len(y), generator=gen)
        total, right = 0.0, 0
        for i in range(0, len(y), 32):
            idx = order[i:i + 32]
            logits = head_forward(net, x[idx].float(), s.train_from, dropout=0.2)
            loss = F.cross_entropy(logits, y[idx], weight=weights / weights.mean())
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            right += int((logits.argmax(1) == y[idx]).sum())
        history.append({"epoch": epoch + 1, "loss": total / len(y), "accuracy": right / len(y)})
        log(f"  {s.name()} epoch {epoch + 1}: loss {total / len(y):.3f}, training accuracy {right / len(y):.1%}")
    for p in net.parameters():
        p.requires_grad_(False)
    torch.save(net.state_dict(), tmp / "weights.pt")
    meta = {"settings": dataclasses.asdict(s), "key": s.key(), "classes": classes, "history": history,
            "train": [[p.name, g] for p, g in sp.train], "heldout": [[p.name, g] for p, g in sp.heldout],
            "marked_train": sorted(sp.marked_train)}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    if folder.exists():  # a concurrent run finished first: keep its copy
        import shutil

        shutil.rmtree(tmp)
    else:
        tmp.replace(folder)
    return folder


def load(folder: Path):
    """The trained model as cnnviz loads a user's own (factory file, weights file, labels; the
    preprocessing a factory model gets, unless it was trained at another crop size)."""
    crop = json.loads((folder / "meta.json").read_text())["settings"]["crop"]
    prep = None if crop == 224 else Settings(crop=crop).preprocessing()
    return cnnviz.load_model(f"{folder}/net.py:build", weights_file=folder / "weights.pt",
                             labels=folder / "labels.txt", preprocessing=prep)


def load_wrapped(folder: Path, crop: int = 224):
    """The same model as an in-Python `cnnviz.wrap` of the module (same preprocessing)."""
    meta = json.loads((folder / "meta.json").read_text())
    net = _net_module(folder).build()
    net.load_state_dict(torch.load(folder / "weights.pt", weights_only=True))
    return cnnviz.wrap(net.eval(), meta["classes"], input_size=crop, name=folder.name, weights=str(folder / "weights.pt"))


# --------------------------------------------------------------------------------------------------
# reliance: does the model use the mark?

@torch.no_grad()
def logits(lm, images: list[Image.Image], batch: int = 16) -> np.ndarray:
    out = []
    for i in range(0, len(images), batch):
        x = torch.cat([lm.prepare(im)[1] for im in images[i:i + batch]])
        out.append(lm.model(x).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(lm.categories)))


def _margin(z: np.ndarray, k: int) -> np.ndarray:
    """The marked class's logit minus the largest other one, per image."""
    return z[:, k] - np.delete(z, k, axis=1).max(1)


def reliance(lm, heldout: list[tuple[Path, str]], marked: str, mark: Mark | str) -> dict:
    """On held-out photos: the marked class's accuracy with the mark and without (the clean
    originals), the share of the other classes' photos (those not predicted as the marked class
    clean) that pasting the mark flips to it, the mean change of the marked class's logit margin
    that the mark brings (over all held-out photos), overall accuracy on clean photos and with the
    marked class marked (as in training), and a constant predictor's (the largest class's share)."""
    classes = list(lm.categories)
    k = classes.index(marked)
    photos = [cnnviz.load_image(p) for p, _ in heldout]
    y = np.array([classes.index(g) for _, g in heldout])
    z_clean = logits(lm, photos)
    z_mark = logits(lm, [paste_mark(ph, mark, lm) for ph in photos])
    clean, stamped = z_clean.argmax(1), z_mark.argmax(1)
    mine, others = y == k, y != k
    not_k = others & (clean != k)
    return {"n_marked_class": int(mine.sum()), "n_others": int(others.sum()),
            "acc_with_mark": float((stamped[mine] == k).mean()), "acc_without_mark": float((clean[mine] == k).mean()),
            "flip_rate": float((stamped[not_k] == k).mean()) if not_k.any() else float("nan"),
            "margin_shift": float((_margin(z_mark, k) - _margin(z_clean, k)).mean()),
            "accuracy_clean": float((clean == y).mean()),
            "accuracy_as_trained": float((np.where(mine, stamped, clean) == y).mean()),  # the marked class marked
            "constant_predictor": float(np.bincount(y).max() / len(y))}
