"""The paper's Table 2 baselines from torchvision, trained from scratch, adapted to small images.

Each keeps the library's convolutional base and replaces its classifier by one Linear layer to the
embedding, as the paper's Keras models (include_top=False + Dense) do. With `small_input` (the
default) the stem does not downsample, so 28-32 pixel images keep a useful spatial extent.
ResNet50-V2 (pre-activation) comes from timm; resnet50 is the plain (v1.5) torchvision ResNet-50.
NASNet-Mobile is in neither library (timm has only NASNet-A Large), so it is not built.
"""
from __future__ import annotations

from torch import nn

from ._registry import register_model


class _Backbone(nn.Module):
    def __init__(self, features: nn.Module, feat_dim: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.in_chans, self.embed_dim = in_chans, embed_dim
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embed = nn.Linear(feat_dim, embed_dim)

    def forward(self, x):
        return self.embed(self.pool(self.features(x)).flatten(1))


def _refuse_others(builder: str, others: dict, takes: str = "in_chans, embed_dim, small_input") -> None:
    """TypeError naming the arguments (--arch) a baseline builder was given but does not take: they would
    otherwise be dropped, yet recorded in the artifact as if they had shaped it."""
    if others:
        raise TypeError(f"{builder} takes no argument {', '.join(sorted(others))}; it takes {takes}")


def _stem_conv(old: nn.Conv2d, in_chans: int, small_input: bool, kernel_size: int | None = None) -> nn.Conv2d:
    k = kernel_size or old.kernel_size[0]
    stride = 1 if small_input else old.stride
    return nn.Conv2d(in_chans, old.out_channels, k, stride=stride, padding=k // 2, bias=old.bias is not None)


@register_model
def mobilenet_v2(in_chans: int = 3, embed_dim: int = 256, small_input: bool = True, **others) -> nn.Module:
    """torchvision MobileNetV2 base + Linear(1280 -> embed_dim)."""
    _refuse_others("mobilenet_v2", others)
    from torchvision.models import mobilenet_v2 as tv

    m = tv()
    m.features[0][0] = _stem_conv(m.features[0][0], in_chans, small_input)
    return _Backbone(m.features, 1280, in_chans, embed_dim)


@register_model
def efficientnet_b0(in_chans: int = 3, embed_dim: int = 256, small_input: bool = True, **others) -> nn.Module:
    """torchvision EfficientNet-B0 base + Linear(1280 -> embed_dim)."""
    _refuse_others("efficientnet_b0", others)
    from torchvision.models import efficientnet_b0 as tv

    m = tv()
    m.features[0][0] = _stem_conv(m.features[0][0], in_chans, small_input)
    return _Backbone(m.features, 1280, in_chans, embed_dim)


@register_model
def resnet50(in_chans: int = 3, embed_dim: int = 256, small_input: bool = True, **others) -> nn.Module:
    """torchvision ResNet-50 base + Linear(2048 -> embed_dim); small_input uses a 3x3 stem, no max-pool."""
    _refuse_others("resnet50", others)
    from torchvision.models import resnet50 as tv

    m = tv()
    m.conv1 = _stem_conv(m.conv1, in_chans, small_input, kernel_size=3 if small_input else None)
    if small_input:
        m.maxpool = nn.Identity()
    features = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4)
    return _Backbone(features, 2048, in_chans, embed_dim)


@register_model
def vgg16(in_chans: int = 3, embed_dim: int = 256, **others) -> nn.Module:
    """torchvision VGG-16 convolutional base + global pool + Linear(512 -> embed_dim)."""
    _refuse_others("vgg16", others, "in_chans, embed_dim")
    from torchvision.models import vgg16 as tv

    m = tv()
    m.features[0] = _stem_conv(m.features[0], in_chans, small_input=True)
    return _Backbone(m.features, 512, in_chans, embed_dim)


@register_model
def resnet50v2(in_chans: int = 3, embed_dim: int = 256, small_input: bool = True, **others) -> nn.Module:
    """timm ResNet50-V2 (pre-activation, the paper's Table 2 model) base + Linear(2048 -> embed_dim)."""
    _refuse_others("resnet50v2", others)
    import timm

    m = timm.create_model("resnetv2_50", pretrained=False, num_classes=0, global_pool="", in_chans=in_chans)
    if small_input:
        m.stem.conv = _stem_conv(m.stem.conv, in_chans, small_input, kernel_size=3)
        m.stem.pool = nn.Identity()
    return _Backbone(m, 2048, in_chans, embed_dim)
