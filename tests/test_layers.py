"""Layer addressing and activation capture on sequential, branching and reused-module models."""

import pytest
import torch
import torch.nn.functional as F
import torchvision

from cnnviz.errors import LayerError
from cnnviz.layers import capture, default_feature_layer, resolve_layer, trace_layers


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(0)
    return torch.randn(1, 3, 224, 224)


def _grab(model, address, x):
    info = resolve_layer(model, address, x)
    with capture(model, info) as cap, torch.no_grad():
        model(x)
    return cap.values[0]


def test_capture_before_inplace_relu_keeps_the_negative_conv_output(x):
    torch.manual_seed(1)
    m = torchvision.models.alexnet().eval()
    assert m.features[1].inplace
    got = _grab(m, "features.0", x)
    expected = F.conv2d(x, m.features[0].weight, m.features[0].bias, stride=4, padding=2)
    assert (got < 0).any(), "the in-place ReLU after features.0 overwrote the captured tensor"
    torch.testing.assert_close(got, expected)


def test_capture_on_a_resnet_block_equals_the_blocks_own_output(x):
    torch.manual_seed(2)
    m = torchvision.models.resnet18().eval()
    with torch.no_grad():
        stem = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        block = m.layer1[0](stem)
    torch.testing.assert_close(_grab(m, "layer1.0", x), block)
    # the block's ReLU runs twice; its second call is the post-addition output
    torch.testing.assert_close(_grab(m, "layer1.0.relu@1", x), block)
    first = _grab(m, "layer1.0.relu@0", x)
    with torch.no_grad():
        expected_first = F.relu(m.layer1[0].bn1(m.layer1[0].conv1(stem)))
    torch.testing.assert_close(first, expected_first)


def test_capture_on_googlenet_concatenation_equals_the_branches_concatenated(x):
    torch.manual_seed(3)
    m = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False).eval()
    got = _grab(m, "inception3a", x)
    inc = m.inception3a
    branch_in = {}
    info = resolve_layer(m, "maxpool2", x)
    with capture(m, info) as cap, torch.no_grad():
        m(x)
        branch_in = cap.values[0]
        expected = torch.cat([inc.branch1(branch_in), inc.branch2(branch_in), inc.branch3(branch_in),
                              inc.branch4(branch_in)], 1)
    torch.testing.assert_close(got, expected)


def test_reused_relu6_of_efficientnet_lite_is_addressed_per_call():
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(4)
    m = EfficientNet.from_name("efficientnet-lite0").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        head = m.extract_features(x)
        stem = m._swish(m._bn0(m._conv_stem(x)))
    torch.testing.assert_close(_grab(m, "_swish@1", x), head)
    torch.testing.assert_close(_grab(m, "_swish@0", x), stem)
    with pytest.raises(LayerError, match=r"_swish@0.*_swish@1"):
        resolve_layer(m, "_swish", x)
    assert default_feature_layer(m, x).address == "_swish@1"


def test_default_feature_layer_is_the_last_conv_block_after_its_activation(x):
    assert default_feature_layer(torchvision.models.alexnet(), x).address == "features.11"
    assert default_feature_layer(torchvision.models.vgg11(), x).address == "features.19"
    # on ResNet the last block's post-addition ReLU is also the output of `layer4`: the container
    # is the outermost module with that output, and the name a user expects
    resnet = torchvision.models.resnet18().eval()
    assert default_feature_layer(resnet, x).address == "layer4"
    torch.testing.assert_close(_grab(resnet, "layer4", x), _grab(resnet, "layer4.1.relu@1", x))


def test_no_default_feature_layer_on_a_vision_transformer(x):
    """ViT-B/16's only convolution is the patch embedding, flattened into tokens right after: its
    Grad-CAM map was all zero. No default is guessed; the message names the layer it would have
    picked, where the layout is lost, and the fixes."""
    vit = torchvision.models.vit_b_16().eval()
    with pytest.raises(LayerError) as e:
        default_feature_layer(vit, x)
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("'conv_proj'", "768x14x14", "'encoder.dropout'", "197x768", "--layer", "convolutional network"):
        assert part in msg, (part, msg)
    # the layer itself is still there for whoever names it
    assert resolve_layer(vit, "conv_proj", x).shape == (768, 14, 14)
    # and the rule leaves CNNs whose last block is pooled (or flattened) into a vector alone
    assert default_feature_layer(torchvision.models.mobilenet_v3_small(), x).address == "features"
    assert default_feature_layer(torchvision.models.squeezenet1_0(), x).address == "classifier.2"


def test_unknown_layer_names_the_closest_ones(x):
    m = torchvision.models.alexnet()
    with pytest.raises(LayerError, match=r"features\.10"):
        resolve_layer(m, "feature.10", x)
    with pytest.raises(LayerError, match="call @3 does not exist"):
        resolve_layer(m, "features.10@3", x)


def test_trace_lists_output_shapes_in_execution_order(x):
    infos = trace_layers(torchvision.models.alexnet(), x)
    by_name = {i.address: i for i in infos}
    assert by_name["features.10"].shape == (256, 13, 13)
    assert by_name["features.12"].shape == (256, 6, 6)
    assert by_name["classifier.6"].shape == (1000,)
    order = [i.address for i in infos]
    assert order.index("features.0") < order.index("features.12") < order.index("classifier.6")
