"""`cnnviz scoremap` (issue 12, item 8): a class's probability at every crop position over a larger
view of the photo. Oracles: at scale 1 the centre position is exactly the model's usual input (a
direct forward pass of `lm.prepare`); on a gray canvas with a real photo pasted at a known place,
the photo's class peaks there on EfficientNet-Lite0; the figure passes the shared figure checks;
bad input is one line."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import cnnviz
from cnnviz.engines.experiments.scoremap import scoremap
from cnnviz.errors import ParameterError
from cnnviz_cli.main import cli

from figure_checks import check as check_figure
from helpers import assert_empty, one_line_error, sample_image


@pytest.fixture(scope="module")
def lm():
    return cnnviz.load_model("efficientnet_lite0")


def _square(path, side=300) -> Image.Image:
    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = min(w, h)
    return img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((side, side))


def test_at_scale_one_the_centre_crop_is_the_usual_input(lm):
    photo = _square(sample_image(0))
    r = scoremap(lm, photo, scale=1.0, stride=8, progress=False)
    with torch.no_grad():
        p = torch.softmax(lm.model.eval()(lm.prepare(photo)[1]), 1)[0]
    assert r.params["target"] == int(p.argmax())
    centre = (int(np.flatnonzero(r.positions_y == 16)[0]), int(np.flatnonzero(r.positions_x == 16)[0]))
    assert r.image.shape[:2] == (256, 256)
    assert abs(float(r.prob[centre]) - float(p[r.params["target"]])) < 1e-4


def test_the_class_of_a_pasted_photo_peaks_where_it_was_pasted(lm):
    canvas = np.full((512, 512, 3), 128, np.uint8)
    obj = lm.prepare(sample_image(0))[0]  # the tench crop, 224 x 224
    y0, x0 = 256, 40
    canvas[y0:y0 + 224, x0:x0 + 224] = obj
    r = scoremap(lm, Image.fromarray(canvas), scale=2.0, stride=32, target=0, progress=False)
    assert r.image.shape[:2] == (512, 512), "scale 2: the shorter side is 2 x 256, the canvas as it is"
    by, bx = r.params["best_position"]
    assert abs(by - y0) <= 32 and abs(bx - x0) <= 32, (by, bx)
    far = r.prob[0, -1]  # the top-right crop holds mostly gray canvas
    assert r.params["best_prob"] > 5 * far


def test_the_figure_and_the_command(lm, tmp_path, monkeypatch):
    r = scoremap(lm, sample_image(2), scale=1.5, stride=32, progress=False)
    for width in (7.0, 3.5):
        check_figure(r.render(width=width), width)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["scoremap", str(sample_image(2)), "--scale", "1.5", "--stride", "48",
                                   "--out", "s.png", "--save", "s.npz", "-q"])
    assert res.exit_code == 0, res.output
    assert {"s.png", "s.npz", "s.json"} <= {p.name for p in tmp_path.iterdir()}
    again = cnnviz.load_result(tmp_path / "s.npz")
    assert again.kind == "scoremap" and again.prob.shape == (len(again.positions_y), len(again.positions_x))


def test_bad_input_is_one_line_and_writes_nothing(lm, tmp_path, monkeypatch):
    with pytest.raises(ParameterError, match="scale 20 is outside"):
        scoremap(lm, sample_image(0), scale=20)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    one_line_error(CliRunner().invoke(cli, ["scoremap", str(sample_image(0)), "--scale", "0.1"]), "scale 0.1")
    one_line_error(CliRunner().invoke(cli, ["scoremap", "missing.jpg"]), "missing.jpg")
    assert_empty(empty)
