"""The model zoo: the paper's parameter counts, the involution layer, the registry."""
import pytest
import torch
from torch import nn

import model

# (name, in_chans, count in the paper's Table 1; Keras counts BatchNorm running mean/var too)
PAPER_COUNTS = [
    ("hybrid1", 1, 116_344), ("hybrid1", 3, 116_634),
    ("cnn3a", 1, 116_320), ("cnn3a", 3, 116_608),
    ("cnn3b", 1, 157_824), ("cnn3b", 3, 158_112),
    ("hybrid2", 1, 116_368), ("hybrid2", 3, 116_660),
    ("hybrid3", 1, 116_392), ("hybrid3", 3, 116_686),
    ("inn2", 1, 560), ("inn2", 3, 1_076),
    ("inn3", 1, 584), ("inn3", 3, 1_102),
    ("inn4", 1, 608),
]


@pytest.mark.parametrize("name,in_chans,expected", PAPER_COUNTS)
def test_parameter_count_matches_the_paper(name, in_chans, expected):
    assert model.count_parameters(model.create_model(name, in_chans=in_chans)) == expected


def test_inn4_rgb_count_follows_the_pattern_not_the_papers_1158():
    # Every other INN row is 26 values per RGB involution + Linear(3 -> 256); the paper's 1,158 for
    # INN-4 breaks that pattern by 30 (docs/model-zoo.md). 1,076 + 2 * 26 = 1,128.
    assert model.count_parameters(model.create_model("inn4", in_chans=3)) == 1_128


def test_hybrid1_is_under_one_megabyte_of_float32_weights():
    n = model.count_parameters(model.create_model("hybrid1"))
    assert n * 4 < 1_000_000


@pytest.mark.parametrize("name", model.list_models())
@pytest.mark.parametrize("in_chans", [1, 3])
def test_every_zoo_model_maps_images_to_256_d_embeddings(name, in_chans):
    net = model.create_model(name, in_chans=in_chans).eval()
    with torch.no_grad():
        out = net(torch.randn(2, in_chans, 32, 32))
    assert out.shape == (2, 256)
    assert torch.isfinite(out).all()
    assert net.embed_dim == 256 and net.in_chans == in_chans


def test_activation_switch_builds_relu_instead_of_gelu():
    gelu = model.create_model("hybrid1")
    relu = model.create_model("hybrid1", act="relu")
    assert any(isinstance(m, nn.GELU) for m in gelu.modules())
    assert not any(isinstance(m, nn.GELU) for m in relu.modules())
    assert any(isinstance(m, nn.ReLU) for m in relu.modules())
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        model.create_model("hybrid1", act="tanh")


def test_stride_sets_the_feature_map_size():
    x = torch.randn(1, 3, 32, 32)
    for stride, side in ((1, 32), (2, 4)):
        features = model.create_model("hybrid1", stride=stride).features
        assert features(x).shape[-1] == side


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="hybrid1"):
        model.create_model("hybrid9")


def test_involution_equals_its_per_pixel_definition():
    torch.manual_seed(0)
    layer = model.Involution(4, kernel_size=3, groups=2, reduction=2).eval()
    x = torch.randn(1, 4, 5, 6)
    with torch.no_grad():
        out = layer(x)
        kernel = layer.span(torch.relu(layer.bn(layer.reduce(x))))  # (1, 9 * groups, H, W)
    xp = torch.nn.functional.pad(x, (1, 1, 1, 1))
    expected = torch.zeros_like(x)
    for c in range(4):
        g = c // 2
        for i in range(5):
            for j in range(6):
                k = kernel[0, g * 9:(g + 1) * 9, i, j].view(3, 3)
                expected[0, c, i, j] = (k * xp[0, c, i:i + 3, j:j + 3]).sum()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_involution_with_stride_halves_the_map():
    layer = model.Involution(3, stride=2, reduction=2)
    assert layer(torch.randn(2, 3, 32, 32)).shape == (2, 3, 16, 16)


def test_per_layer_strides_override_the_common_stride():
    features = model.create_model("hybrid1", strides=(1, 2, 2)).features
    assert features(torch.randn(1, 3, 32, 32)).shape[-1] == 8
    with pytest.raises(ValueError, match="one stride per convolution"):
        model.create_model("hybrid1", strides=(1, 2))


def _with_trained_norm_statistics(net: nn.Module, in_chans: int) -> nn.Module:
    """Give every optional BatchNorm non-trivial affine weights and running statistics, as training would."""
    torch.manual_seed(0)
    for m in net.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(16, in_chans, 32, 32) * 2 + 0.5)
    return net.eval()


@pytest.mark.parametrize("arch", [{}, {"strides": (1, 2, 2)}, {"residual": True, "widths": (32, 64, 64)}],
                         ids=["hybrid1", "strides122", "residual"])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_folding_the_batchnorms_keeps_the_function_and_gives_the_plain_architecture(arch, in_chans):
    trained = _with_trained_norm_statistics(
        model.create_model("hybrid1", in_chans=in_chans, norm=True, head_norm=True, **arch), in_chans)
    fused = trained.fused().eval()
    plain = model.create_model("hybrid1", in_chans=in_chans, **arch)
    # the fused model is the plain architecture: same parameters, same state-dict keys and shapes
    assert model.count_parameters(fused) == model.count_parameters(plain)
    assert {k: v.shape for k, v in fused.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    assert not any(isinstance(m, nn.BatchNorm1d) for m in fused.modules())
    x = torch.randn(8, in_chans, 32, 32)
    with torch.no_grad():
        expected, got = trained(x), fused(x)
    assert expected.abs().max() > 0.1  # the comparison is not between two near-zero outputs
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", [{}, {"strides": (1, 2, 2)}, {"residual": True, "widths": (32, 64, 64)}],
                         ids=["hybrid1", "strides122", "residual"])
def test_a_plain_model_loads_into_the_one_with_batchnorms_computing_the_same_and_folds_back_to_itself(arch):
    """load_plain is fused() backwards: what fine-tuning a shipped (plain) model with fold_norm starts from."""
    trained = _with_trained_norm_statistics(model.create_model("hybrid1", norm=True, head_norm=True, **arch), 3)
    plain = trained.fused().eval()   # a plain model as the shipped ones are (no bias where no BatchNorm takes it)
    normed = model.create_model("hybrid1", norm=True, head_norm=True, **arch)
    normed.load_plain(plain)
    normed.eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        expected = plain(x)
        torch.testing.assert_close(normed(x), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(normed.fused().eval()(x), expected, rtol=1e-4, atol=1e-5)
    assert expected.abs().max() > 0.1
    with pytest.raises(ValueError, match="is not this one"):
        model.create_model("hybrid1", norm=True, widths=(8, 16, 32)).load_plain(plain)


def test_the_papers_hybrid1_counts_hold_after_folding():
    for in_chans, expected in ((1, 116_344), (3, 116_634)):
        net = model.create_model("hybrid1", in_chans=in_chans, norm=True, head_norm=True)
        assert model.count_parameters(net) > expected  # the training-time BatchNorms are extra
        assert model.count_parameters(net.fused()) == expected
