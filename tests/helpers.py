"""Shared test helpers: where the real images live, and how to check a model was left untouched."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import torch

def _find_sample() -> Path:
    """The 500-photo ImageNet sample: $CNNVIZ_IMAGENET_SAMPLE if set, else beside the checkout
    (<checkout>/../shared/data/imagenet-sample), else the workplace's /work/shared (for a checkout
    cloned elsewhere, e.g. into /tmp)."""
    candidates = [Path(os.environ["CNNVIZ_IMAGENET_SAMPLE"])] if os.environ.get("CNNVIZ_IMAGENET_SAMPLE") else []
    candidates += [Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample",
                   Path("/work/shared/data/imagenet-sample")]
    return next((c for c in candidates if (c / "labels.csv").is_file()), candidates[0])


SAMPLE = _find_sample()
ASSETS = Path(__file__).resolve().parents[1] / "assets"


def sample_rows() -> list[dict]:
    if not (SAMPLE / "labels.csv").is_file():
        import pytest

        pytest.skip(f"no ImageNet sample at {SAMPLE}: set CNNVIZ_IMAGENET_SAMPLE to a folder holding labels.csv "
                    "(file,class_index,...) and images/ (see README, Quick start)")
    with open(SAMPLE / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def sample_image(index: int) -> Path:
    """The ImageNet sample photo of class `index` (even indices only)."""
    return next(SAMPLE / "images" / r["file"] for r in sample_rows() if int(r["class_index"]) == index)


def snapshot(model: torch.nn.Module, x: torch.Tensor) -> dict:
    """Everything an engine must leave as it found it."""
    training = {n: m.training for n, m in model.named_modules()}
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.eval()
    with torch.no_grad():
        out = model(x).clone()
    for n, m in model.named_modules():
        m.training = training[n]
    return {"state": state, "out": out, "training": training,
            "device": next(model.parameters()).device}


def assert_untouched(model: torch.nn.Module, x: torch.Tensor, before: dict) -> None:
    from torch.nn.modules import module as M

    for name, m in model.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                     "_state_dict_hooks", "_load_state_dict_pre_hooks"):
            assert not getattr(m, attr, {}), f"{attr} left on {name or 'the model'}"
        assert m.training == before["training"][name], f"training flag of {name or 'the model'} changed"
    for attr in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks", "_global_module_registration_hooks"):
        assert not getattr(M, attr, {}), f"global {attr} left"
    state = model.state_dict()
    assert state.keys() == before["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(state[k], v), f"{k} changed"
    assert next(model.parameters()).device == before["device"]
    training = {n: m.training for n, m in model.named_modules()}
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), before["out"])
    for n, m in model.named_modules():
        m.training = training[n]


BAD_IMAGE_KINDS = ["missing", "directory", "unreadable", "truncated", "text", "empty"]


def bad_image_file(kind: str, folder: Path) -> tuple[Path, str]:
    """A file a user might pass by mistake, and a phrase its error message must contain."""
    import pytest

    source = sample_image(0)
    if kind == "missing":
        return folder / "missing.jpg", "not found"
    if kind == "directory":
        d = folder / "folder.jpg"
        d.mkdir()
        return d, "directory"
    if kind == "unreadable":
        if os.geteuid() == 0:
            pytest.skip("running as root: chmod 000 does not block reads")
        p = folder / "locked.jpg"
        p.write_bytes(source.read_bytes())
        p.chmod(0)
        return p, "permission denied"
    if kind == "truncated":
        data = source.read_bytes()
        p = folder / "half.jpg"
        p.write_bytes(data[: len(data) // 2])
        return p, "truncated"
    if kind == "text":
        p = folder / "notes.jpg"
        p.write_text("this is a text file, not a JPEG\n" * 20)
        return p, "not an image"
    if kind == "empty":
        p = folder / "empty.jpg"
        p.write_bytes(b"")
        return p, "is empty"
    raise AssertionError(kind)


def one_line_error(res, *fragments: str) -> str:
    """A CLI run failed with exactly one `Error: ...` line on stderr that holds every fragment."""
    assert res.exit_code != 0, f"exit 0 for bad input; stdout: {res.stdout!r}"
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {res.stderr!r}"
    line = lines[0]
    assert line.startswith("Error: "), line
    assert "internal error" not in line, line
    for f in fragments:
        assert f in line, f"{f!r} not in {line!r}"
    return line


def assert_empty(folder: Path) -> None:
    left = sorted(p.name for p in folder.iterdir())
    assert left == [], f"a failed run left files behind: {left}"


def paste(photo, box_size: int, top: int, left: int):
    """`photo`'s centre square, resized to box_size, pasted into a neutral gray 224x224 canvas."""
    from PIL import Image

    canvas = Image.new("RGB", (224, 224), (124, 116, 104))  # a neutral, ImageNet-mean-like gray
    w, h = photo.size
    s = min(w, h)
    square = photo.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    canvas.paste(square.resize((box_size, box_size), Image.Resampling.BICUBIC), (left, top))
    return canvas


def install_plugin(site, module: str, body: str, group: str, entry: str) -> None:
    """A distribution as pip leaves it in `site`: the module and its .dist-info whose
    entry_points.txt declares `entry` ("name = module[:attr]") in entry point `group`."""
    (site / f"{module}.py").write_text(body)
    info = site / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{entry}\n")


# --------------------------------------------------------------------------------------------------
# Dataset-scan tests (probe, neighbours, semantics): the photos, a small model, the hook oracle, the command

def twelve_photos() -> tuple[list[dict], list[str], dict[str, str]]:
    """Every 42nd sample photo (12: classes 0, 84, 168, ... 924): their rows of labels.csv, their
    paths, and a label a probe can learn per file name: natural kinds (ImageNet indices below 398)
    against artifacts."""
    rows = sample_rows()[::42]
    files = [str(SAMPLE / "images" / r["file"]) for r in rows]
    labels = {r["file"]: ("natural" if int(r["class_index"]) < 398 else "artifact") for r in rows}
    return rows, files, labels


def random_model(factory, classes: int, crop: int, resize: int):
    """A torchvision architecture with random weights (torch seed 0), `classes` outputs named k0,
    k1, ..., fed a crop x crop square after resizing to `resize`: for tests where the structure
    matters, not the weights."""
    from cnnviz.models import LoadedModel, Preprocessing

    torch.manual_seed(0)
    model = factory(num_classes=classes).eval()
    return LoadedModel(model, factory.__name__, "random", Preprocessing(crop=(crop, crop), resize=resize),
                       [f"k{i}" for i in range(classes)])


def layer_outputs(lm, files, layer: str) -> list[torch.Tensor]:
    """Each image alone through the model (its own preprocessing), the output of `layer` for it
    (batch dimension dropped), caught by a plain forward hook: the oracle for the scans."""
    module = dict(lm.model.named_modules())[layer]
    store = []
    h = module.register_forward_hook(lambda m, i, o: store.append(o.detach()[0].clone()))
    try:
        with torch.no_grad():
            for f in files:
                lm.model(lm.prepare(f)[1])
    finally:
        h.remove()
    return store


def command_on_photos(monkeypatch, tmp_path: Path, lm, files, folder_of=None):
    """A command test's setup: the commands get `lm` instead of loading a model; DATA is
    tmp_path/data with a link to each of `files` (in the subfolder `folder_of(file name)` when
    given: class folders); the working directory is tmp_path/out, empty. Returns (runner, cli,
    data, out)."""
    from click.testing import CliRunner

    import cnnviz_cli.main as climain

    monkeypatch.setattr(climain, "_load", lambda spec, structure_only=False: lm)
    data = tmp_path / "data"
    for f in files:
        folder = data / folder_of(Path(f).name) if folder_of is not None else data
        folder.mkdir(parents=True, exist_ok=True)
        (folder / Path(f).name).symlink_to(f)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(out)
    return CliRunner(), climain.cli, data, out


def assert_redraws(runner, cli, result, saved: str, figure: str) -> None:
    """`cnnviz render` redraws the saved result at half width, and the result's figure passes the
    figure checks at a page wide and at half width (text >= 7 pt, nothing outside, no overlaps)."""
    import figure_checks

    res = runner.invoke(cli, ["render", saved, "-o", figure, "--width", "3.5"])
    assert res.exit_code == 0, res.output
    figure_checks.check(result.render(), 7.0)
    figure_checks.check(result.render(width=3.5), 3.5)


class ViewNet(torch.nn.Module):
    """A conv, ReLU and linear layer that flattens its feature map with .view, which fails on a
    channels_last tensor: for the code paths that must fall back to the plain memory layout."""

    def __init__(self, size: int, stride: int, classes: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 5, stride=stride)
        side = (size - 5) // stride + 1
        self.fc = torch.nn.Linear(4 * side * side, classes)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.size(0), -1))
