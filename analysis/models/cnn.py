"""CNN baselines from timm: RegNetY at 224 px and a small ResNet for 28/32 px images."""

from typing import Any, Dict

import timm
from torch import nn
from timm.models.resnet import BasicBlock, ResNet

# Stage widths of the small ResNet: ResNet-18's layout at 3/8 width, so that at 32 px it costs
# about as much as vit_p_cifar (~80 M multiply-adds).
SMALL_RESNET_WIDTHS = (24, 48, 96, 192)


def small_resnet(in_chans: int, num_classes: int) -> ResNet:
    """Returns a BasicBlock [2,2,2,2] ResNet with a 3x3 stride-1 stem and no max-pool."""
    w = SMALL_RESNET_WIDTHS
    # a 'deep' stem makes timm size the stem output from stem_width (2 * stem_width == w[0]);
    # it is then replaced by a single 3x3 stride-1 conv, as is usual for small images
    model = ResNet(
        BasicBlock,
        [2, 2, 2, 2],
        num_classes=num_classes,
        in_chans=in_chans,
        channels=w,
        stem_type="deep",
        stem_width=w[0] // 2,
    )
    model.conv1 = nn.Conv2d(in_chans, w[0], 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    for info in model.feature_info:  # the stem no longer downsamples by 4
        info["reduction"] = max(1, info["reduction"] // 4)
    return model


def build_cnn(s: Dict[str, Any]) -> nn.Module:
    """Returns the CNN for resolved preset settings `s` (keys arch, in_chans, num_classes)."""
    if s["arch"] == "resnet_small":
        return small_resnet(s["in_chans"], s["num_classes"])
    return timm.create_model(s["arch"], pretrained=False, num_classes=s["num_classes"], in_chans=s["in_chans"])
