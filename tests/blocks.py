"""Hand-written equivalents of the real blocks that hold depthwise-separable convolutions
(timm and torchvision, written out so the tests download and import nothing): the layout of
their modules and their forwards are the libraries' own, names included, so ``convert`` meets
what it meets in the real models."""
import torch
import torch.nn.functional as F
from torch import nn


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's BatchNormAct2d: batch norm, then ``drop`` and ``act`` children."""

    def __init__(self, c, act=nn.ReLU):
        super().__init__(c)
        self.drop = nn.Identity()
        self.act = act() if act is not None else nn.Identity()

    def forward(self, x):
        return self.act(self.drop(super().forward(x)))


class Conv2dSame(nn.Conv2d):
    """timm's Conv2dSame: TensorFlow 'SAME' padding computed from each input's size."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        pads = []
        for i, k, s, d in zip((ih, iw), self.kernel_size, self.stride, self.dilation):
            total = max((-(-i // s) - 1) * s + (k - 1) * d + 1 - i, 0)
            pads.append((total // 2, total - total // 2))
        x = F.pad(x, [pads[1][0], pads[1][1], pads[0][0], pads[0][1]])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class SeparableConv2d(nn.Module):
    """timm.layers.SeparableConv2d: the two convs as named attributes, nothing between."""

    def __init__(self, c, m, k=3, dilation=1):
        super().__init__()
        self.conv_dw = nn.Conv2d(c, c, k, padding=dilation * (k - 1) // 2, dilation=dilation,
                                 groups=c, bias=False)
        self.conv_pw = nn.Conv2d(c, m, 1, bias=True)

    def forward(self, x):
        return self.conv_pw(self.conv_dw(x))


class SeparableConvNormAct(nn.Module):
    """timm.layers.SeparableConvNormAct: conv_dw -> conv_pw -> BatchNormAct2d."""

    def __init__(self, c, m, k=3, stride=1):
        super().__init__()
        self.conv_dw = Conv2dSame(c, c, k, stride=stride, groups=c, bias=False)
        self.conv_pw = nn.Conv2d(c, m, 1, bias=False)
        self.bn = BatchNormAct2d(m, nn.ReLU)

    def forward(self, x):
        return self.bn(self.conv_pw(self.conv_dw(x)))


class XceptionSeparableConv2d(nn.Module):
    """timm xception_aligned's SeparableConv2d: dw -> BN -> act -> pw -> BN -> act."""

    def __init__(self, c, m, k=3, stride=1, dilation=1):
        super().__init__()
        pad = dilation * (k - 1) // 2
        self.conv_dw = nn.Conv2d(c, c, k, stride, pad, dilation, groups=c, bias=False)
        self.bn_dw = nn.BatchNorm2d(c)
        self.act_dw = nn.ReLU(inplace=True)
        self.conv_pw = nn.Conv2d(c, m, 1, bias=False)
        self.bn_pw = nn.BatchNorm2d(m)
        self.act_pw = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.act_dw(self.bn_dw(self.conv_dw(x)))
        return self.act_pw(self.bn_pw(self.conv_pw(x)))


class XceptionBlock(nn.Module):
    """timm xception_aligned's Block: three separable convs (the last strided), a 1x1 strided
    shortcut with batch norm."""

    def __init__(self, c, m):
        super().__init__()
        self.shortcut = nn.Sequential(nn.Conv2d(c, m, 1, stride=2, bias=False),
                                      nn.BatchNorm2d(m))
        self.stack = nn.Sequential(XceptionSeparableConv2d(c, m),
                                   XceptionSeparableConv2d(m, m, dilation=2),
                                   XceptionSeparableConv2d(m, m, stride=2))

    def forward(self, x):
        return self.stack(x) + self.shortcut(x)


class Conv2dNormActivation(nn.Sequential):
    """torchvision.ops.Conv2dNormActivation: Sequential(conv, BN, act)."""

    def __init__(self, c, m, k=3, stride=1, groups=1, act=nn.ReLU6):
        layers = [nn.Conv2d(c, m, k, stride, (k - 1) // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(m)]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)


class MobileNetV2InvertedResidual(nn.Module):
    """torchvision's MobileNetV2 InvertedResidual: expand 1x1 -> BN -> ReLU6 -> dw 3x3 -> BN ->
    ReLU6 -> project 1x1 -> BN, residual when shapes allow."""

    def __init__(self, c, m, stride=1, expand=2):
        super().__init__()
        hidden = c * expand
        self.use_res_connect = stride == 1 and c == m
        self.conv = nn.Sequential(Conv2dNormActivation(c, hidden, 1),
                                  Conv2dNormActivation(hidden, hidden, 3, stride, hidden),
                                  nn.Conv2d(hidden, m, 1, bias=False), nn.BatchNorm2d(m))

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MBConvNoSE(nn.Module):
    """timm's EfficientNet InvertedResidual (MBConv) without squeeze-excitation."""

    def __init__(self, c, m, k=3, expand=2):
        super().__init__()
        mid = c * expand
        self.has_skip = c == m
        self.conv_pw = nn.Conv2d(c, mid, 1, bias=False)
        self.bn1 = BatchNormAct2d(mid, nn.SiLU)
        self.conv_dw = nn.Conv2d(mid, mid, k, padding=k // 2, groups=mid, bias=False)
        self.bn2 = BatchNormAct2d(mid, nn.SiLU)
        self.aa = nn.Identity()
        self.se = nn.Identity()
        self.conv_pwl = nn.Conv2d(mid, m, 1, bias=False)
        self.bn3 = BatchNormAct2d(m, None)
        self.drop_path = nn.Identity()

    def forward(self, x):
        shortcut = x
        x = self.bn1(self.conv_pw(x))
        x = self.aa(self.bn2(self.conv_dw(x)))
        x = self.bn3(self.conv_pwl(self.se(x)))
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        return x


class LayerNorm2d(nn.LayerNorm):
    """timm's LayerNorm2d: LayerNorm over the channels of an NCHW tensor."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvMlp(nn.Module):
    def __init__(self, c, hidden):
        super().__init__()
        self.fc1 = nn.Conv2d(c, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, c, 1)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class ConvNeXtBlock(nn.Module):
    """timm's ConvNeXtBlock with conv_mlp=True: dw 7x7 -> LayerNorm over channels -> 1x1 ->
    GELU -> 1x1 -> layer scale, residual."""

    def __init__(self, c, k=7):
        super().__init__()
        self.conv_dw = nn.Conv2d(c, c, k, padding=k // 2, groups=c)
        self.norm = LayerNorm2d(c, eps=1e-6)
        self.mlp = ConvMlp(c, 4 * c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x):
        shortcut = x
        x = self.mlp(self.norm(self.conv_dw(x)))
        return x * self.gamma.view(1, -1, 1, 1) + shortcut


class Permute(nn.Module):
    """torchvision.ops.misc.Permute."""

    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return torch.permute(x, self.dims)


class CNBlock(nn.Module):
    """torchvision's ConvNeXt CNBlock: dw 7x7 -> Permute -> LayerNorm -> Linear -> GELU ->
    Linear -> Permute back, layer scale, residual."""

    def __init__(self, c):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(c, c, 7, padding=3, groups=c, bias=True),
                                   Permute([0, 2, 3, 1]), nn.LayerNorm(c, eps=1e-6),
                                   nn.Linear(c, 4 * c, bias=True), nn.GELU(),
                                   nn.Linear(4 * c, c, bias=True), Permute([0, 3, 1, 2]))
        self.layer_scale = nn.Parameter(torch.full((c, 1, 1), 0.5))

    def forward(self, x):
        return self.layer_scale * self.block(x) + x


class ConformerConvModule(nn.Module):
    """The Conformer convolution module (ESPnet/torchaudio layout): 1x1 -> GLU -> depthwise
    K31 -> BatchNorm1d -> SiLU -> 1x1 -> Dropout, in an nn.Sequential."""

    def __init__(self, c, k=31):
        super().__init__()
        self.sequential = nn.Sequential(nn.Conv1d(c, 2 * c, 1), nn.GLU(dim=1),
                                        nn.Conv1d(c, c, k, padding=k // 2, groups=c),
                                        nn.BatchNorm1d(c), nn.SiLU(), nn.Conv1d(c, c, 1),
                                        nn.Dropout(0.1))

    def forward(self, x):
        return self.sequential(x)


class QuartzNetSubBlock(nn.Module):
    """A QuartzNet (NeMo JasperBlock, separable) sub-block written with named attributes:
    depthwise K33 -> 1x1 -> BatchNorm1d -> ReLU -> Dropout."""

    def __init__(self, c, m, k=33, dilation=1):
        super().__init__()
        self.dw = nn.Conv1d(c, c, k, padding=dilation * (k // 2), dilation=dilation, groups=c,
                            bias=False)
        self.pw = nn.Conv1d(c, m, 1, bias=False)
        self.bn = nn.BatchNorm1d(m, eps=1e-3, momentum=0.1)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(0.2)

    def forward(self, x):
        return self.drop(self.act(self.bn(self.pw(self.dw(x)))))


def quartznet_k87_sequential(c, m, k=87, dilation=2):
    """QuartzNet's C4 block (NeMo JasperBlock, separable, K87 dilation 2) written as an
    nn.Sequential: depthwise -> 1x1 -> BatchNorm1d -> ReLU -> Dropout."""
    return nn.Sequential(nn.Conv1d(c, c, k, padding=dilation * (k // 2), dilation=dilation,
                                   groups=c, bias=False),
                         nn.Conv1d(c, m, 1, bias=False), nn.BatchNorm1d(m, eps=1e-3),
                         nn.ReLU(), nn.Dropout(0.2))


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random running statistics and affine parameters for every batch norm, random affine
    parameters for every layer norm (fresh ones are the identity (batch norm in eval mode) or
    leave the affine untested, which would hide a wrong fold)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.randn(n, generator=g) * 0.5 + 1)
                m.bias.copy_(torch.randn(n, generator=g) * 0.5)
            elif isinstance(m, nn.LayerNorm):
                n = m.weight.numel()
                m.weight.copy_(torch.randn(n, generator=g) * 0.5 + 1)
                m.bias.copy_(torch.randn(n, generator=g) * 0.5)
    return model


#: name -> (builder, input channels, dsd_fwd launches per eval forward[, spatial dims])
BLOCKS = {
    "timm_separable": (lambda: SeparableConv2d(4, 6, 3, dilation=2), 4, 1),
    "separable_conv_norm_act": (lambda: SeparableConvNormAct(4, 6, 3, stride=2), 4, 1),
    "xception_block": (lambda: XceptionBlock(4, 6), 4, 3),
    "mobilenetv2_inverted_residual": (lambda: MobileNetV2InvertedResidual(4, 4), 4, 1),
    "mbconv_no_se": (lambda: MBConvNoSE(4, 4), 4, 1),
    "convnext_block": (lambda: ConvNeXtBlock(4), 4, 1),
    "torchvision_cnblock": (lambda: CNBlock(6), 6, 1),
    "conformer_conv_module": (lambda: ConformerConvModule(4), 4, 1, 1),
    "quartznet_sub_block": (lambda: QuartzNetSubBlock(4, 6, dilation=2), 4, 1, 1),
    "quartznet_k87_sequential": (lambda: quartznet_k87_sequential(4, 6), 4, 1, 1),
}
