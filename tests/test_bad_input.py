"""Bad input gets a clear error that names the argument, before any kernel launch."""
import pytest
import torch

import triton_dsd
from triton_dsd import _runtime

X2 = lambda: torch.randn(1, 3, 8, 8)  # noqa: E731
W2 = lambda: torch.randn(3, 1, 3, 3)  # noqa: E731
X1 = lambda: torch.randn(1, 3, 16)  # noqa: E731
W1 = lambda: torch.randn(3, 1, 3)  # noqa: E731
d2, d1 = triton_dsd.depthwise_conv2d, triton_dsd.depthwise_conv1d


SEP2 = triton_dsd.DepthwiseSeparableDilatedConv2d
SEP1 = triton_dsd.DepthwiseSeparableDilatedConv1d


def DSD2(dw=None, db=None, pw=None, pb=None):
    """dsd_conv2d on a valid C=3, m=2, M=5 problem with one argument replaced."""
    return triton_dsd.dsd_conv2d(X2(), torch.randn(6, 1, 3, 3) if dw is None else dw,
                                 torch.zeros(6) if db is None else db,
                                 torch.randn(5, 6, 1, 1) if pw is None else pw,
                                 torch.zeros(5) if pb is None else pb, 1, 1, 1)

CASES = [
    # (call, error type, words the message must contain)
    ("x not a tensor", lambda: d2([[1.0]], W2()), TypeError, "`x`"),
    ("x rank 2 for 2D", lambda: d2(torch.randn(3, 8), W2()), ValueError, "`x`"),
    ("x rank 5 for 2D", lambda: d2(torch.randn(1, 3, 8, 8, 1), W2()), ValueError, "`x`"),
    ("unbatched x channels", lambda: d2(torch.randn(4, 8, 8), W2()), ValueError, "`weight`"),
    ("x rank 4 for 1D", lambda: d1(X2(), W1()), ValueError, "`x`"),
    ("integer x", lambda: d2(X2().long(), W2()), TypeError, "`x`"),
    ("bool x", lambda: d2(X2() > 0, W2()), TypeError, "`x`"),
    ("weight rank", lambda: d2(X2(), torch.randn(3, 3, 3)), ValueError, "`weight`"),
    ("weight dim1 != 1", lambda: d2(X2(), torch.randn(3, 2, 3, 3)), ValueError, "`weight`"),
    ("weight C*m not multiple of C", lambda: d2(X2(), torch.randn(4, 1, 3, 3)), ValueError, "`weight`"),
    ("weight fewer channels than x", lambda: d2(X2(), torch.randn(2, 1, 3, 3)), ValueError, "`weight`"),
    ("dtype mismatch", lambda: d2(X2(), W2().half()), TypeError, "`weight`"),
    ("bias dtype mismatch", lambda: d2(X2(), W2(), torch.zeros(3, dtype=torch.float64)), TypeError, "`bias`"),
    ("bias shape", lambda: d2(X2(), W2(), torch.zeros(4)), ValueError, "`bias`"),
    ("weight on another device", lambda: d2(X2(), W2().to("meta")), ValueError, "`weight`"),
    ("x on meta", lambda: d2(X2().to("meta"), W2().to("meta")), ValueError, "`x`"),
    ("stride 0", lambda: d2(X2(), W2(), stride=0), ValueError, "`stride`"),
    ("stride negative", lambda: d1(X1(), W1(), stride=-1), ValueError, "`stride`"),
    ("stride float", lambda: d2(X2(), W2(), stride=1.5), TypeError, "`stride`"),
    ("stride bool", lambda: d2(X2(), W2(), stride=True), TypeError, "`stride`"),
    ("stride tuple length", lambda: d2(X2(), W2(), stride=(1, 1, 1)), ValueError, "`stride`"),
    ("dilation 0", lambda: d2(X2(), W2(), dilation=(1, 0)), ValueError, "`dilation`"),
    ("negative padding", lambda: d2(X2(), W2(), padding=-1), ValueError, "`padding`"),
    ("unknown padding string", lambda: d2(X2(), W2(), padding="full"), ValueError, "`padding`"),
    ("same with stride 2", lambda: d2(X2(), W2(), stride=2, padding="same"), ValueError, "`padding`"),
    ("causal with stride 2", lambda: d1(X1(), W1(), stride=2, padding="causal"), ValueError, "`padding`"),
    ("causal on 2D", lambda: d2(X2(), W2(), padding="causal"), ValueError, "'causal' is for 1D only"),
    ("output < 1", lambda: d2(torch.randn(1, 3, 4, 8), W2(), dilation=2), ValueError, "`x`"),
    ("output < 1 (1D)", lambda: d1(torch.randn(1, 3, 2), W1()), ValueError, "`x`"),
    ("no channels", lambda: d2(torch.randn(1, 0, 8, 8), W2()), ValueError, "`x`"),
    # pointwise
    ("pw weight channels", lambda: triton_dsd.pointwise_conv2d(X2(), torch.randn(4, 2, 1, 1)), ValueError, "`weight`"),
    ("pw weight not 1x1", lambda: triton_dsd.pointwise_conv2d(X2(), torch.randn(4, 3, 3, 3)), ValueError, "`weight`"),
    ("pw bias shape", lambda: triton_dsd.pointwise_conv1d(X1(), torch.randn(4, 3, 1), torch.zeros(3)), ValueError, "`bias`"),
    ("pw dtype mix", lambda: triton_dsd.pointwise_conv2d(X2(), torch.randn(4, 3, 1, 1).half()), TypeError, "`weight`"),
    # whole layer
    ("dsd pw_weight C*m", lambda: DSD2(pw=torch.randn(5, 4, 1, 1)), ValueError, "`pw_weight`"),
    ("dsd pw_weight rank", lambda: DSD2(pw=torch.randn(5, 6)), ValueError, "`pw_weight`"),
    ("dsd pw_bias shape", lambda: DSD2(pb=torch.zeros(6)), ValueError, "`pw_bias`"),
    ("dsd dw_bias shape", lambda: DSD2(db=torch.zeros(5)), ValueError, "`dw_bias`"),
    ("dsd dw_weight shape", lambda: DSD2(dw=torch.randn(6, 2, 3, 3)), ValueError, "`dw_weight`"),
    ("dsd mixed dtype pw", lambda: DSD2(pw=torch.randn(5, 6, 1, 1).double()), TypeError, "`pw_weight`"),
    ("dsd mixed dtype pw_bias", lambda: DSD2(pb=torch.zeros(5).half()), TypeError, "`pw_bias`"),
    ("dsd mixed dtype dw_bias", lambda: DSD2(db=torch.zeros(6).bfloat16()), TypeError, "`dw_bias`"),
    ("dsd1d causal stride", lambda: triton_dsd.dsd_conv1d(X1(), W1(), None, torch.randn(2, 3, 1), None, 2, "causal"), ValueError, "`padding`"),
    ("dsd output < 1", lambda: triton_dsd.dsd_conv2d(torch.randn(1, 3, 3, 3), W2(), None, torch.randn(2, 3, 1, 1), None, 1, 0, 2), ValueError, "`x`"),
    # separable layers: constructor
    ("sep in_channels 0", lambda: SEP2(0, 4, 3), ValueError, "`in_channels`"),
    ("sep out_channels -1", lambda: SEP2(3, -1, 3), ValueError, "`out_channels`"),
    ("sep kernel 0", lambda: SEP2(3, 4, 0), ValueError, "`kernel_size`"),
    ("sep kernel tuple negative", lambda: SEP2(3, 4, (3, -1)), ValueError, "`kernel_size`"),
    ("sep depth_multiplier 0", lambda: SEP2(3, 4, 3, depth_multiplier=0), ValueError, "`depth_multiplier`"),
    ("sep padding_mode", lambda: SEP2(3, 4, 3, padding_mode="mirror"), ValueError, "`padding_mode`"),
    ("sep same stride 2", lambda: SEP2(3, 4, 3, padding="same", stride=2), ValueError, "`padding`"),
    ("sep causal on 2D", lambda: SEP2(3, 4, 3, padding="causal"), ValueError, "'causal' is for 1D only"),
    ("sep1d causal stride 2", lambda: SEP1(3, 4, 3, padding="causal", stride=2), ValueError, "`padding`"),
    ("eager sep causal on 2D", lambda: triton_dsd.EagerDepthwiseSeparableDilatedConv2d(3, 4, 3, padding="causal"), ValueError, "`padding`"),
    ("sep dilation 0", lambda: SEP1(3, 4, 3, dilation=0), ValueError, "`dilation`"),
    # separable layers: forward
    ("sep forward channels", lambda: SEP2(4, 4, 3)(X2()), ValueError, "in_channels=4"),
    ("sep forward rank", lambda: SEP1(3, 4, 3)(X2()), ValueError, "`x`"),
    ("sep forward dtype", lambda: SEP2(3, 4, 3)(X2().double()), TypeError, "`dw_weight`"),
    ("sep forward device", lambda: SEP2(3, 4, 3)(X2().to("meta")), ValueError, "`x`"),
    ("convert non-module", lambda: triton_dsd.convert("model"), TypeError, "`model`"),
    # layers
    ("layer out not multiple of in", lambda: triton_dsd.DepthwiseConv2d(3, 4, 3), ValueError, "`out_channels`"),
    ("layer in_channels 0", lambda: triton_dsd.DepthwiseConv2d(0, 4, 3), ValueError, "`in_channels`"),
    ("layer groups != in", lambda: triton_dsd.DepthwiseConv1d(4, 8, 3, groups=1), ValueError, "`groups`"),
    ("layer causal stride 2", lambda: triton_dsd.DepthwiseConv1d(4, 4, 3, stride=2, padding="causal"), ValueError, "`padding`"),
    ("layer causal on 2D", lambda: triton_dsd.DepthwiseConv2d(4, 4, 3, padding="causal"), ValueError, "padding"),
    ("layer same with stride 2", lambda: triton_dsd.DepthwiseConv2d(4, 4, 3, stride=2, padding="same"), ValueError, "padding"),
    ("layer forward wrong channels", lambda: triton_dsd.DepthwiseConv2d(4, 4, 3)(X2()), ValueError, "in_channels=4"),
    ("layer forward wrong rank", lambda: triton_dsd.DepthwiseConv1d(3, 3, 3)(X2()), ValueError, "`x`"),
    ("layer forward rank 1", lambda: triton_dsd.DepthwiseConv1d(3, 3, 3)(torch.randn(16)), ValueError, "`x`"),
    ("dsd without pw_weight", lambda: triton_dsd.dsd_conv2d(X2(), W2()), TypeError, "`pw_weight`"),
    ("eager class fused=", lambda: triton_dsd.EagerDepthwiseSeparableDilatedConv2d(3, 4, 3, fused=True), TypeError, "fused"),
    ("pointwise layer k3", lambda: triton_dsd.PointwiseConv2d(3, 4, 3), ValueError, "`kernel_size`"),
    ("depthwise layer groups 1", lambda: triton_dsd.DepthwiseConv2d(3, 3, 3, 1, 1, 1, 1), ValueError, "`groups`"),
    ("layer forward wrong dtype", lambda: triton_dsd.DepthwiseConv2d(3, 3, 3)(X2().double()), TypeError, "`weight`"),
]


@pytest.mark.parametrize("call,exc,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    assert words in str(info.value), str(info.value)
    assert sum(_runtime.LAUNCHES.values()) == 0, "a kernel launched on bad input"
