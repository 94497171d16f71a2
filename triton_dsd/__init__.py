"""triton_dsd: Triton kernels for the depthwise-separable dilated convolution.

Device policy: CUDA tensors run the Triton kernels; CPU tensors run them under the Triton
interpreter when TRITON_INTERPRET=1 is set (before import), and eager PyTorch otherwise.
"""
from triton_dsd.functional import (depthwise_conv1d, depthwise_conv2d, dsd_conv1d, dsd_conv2d,
                                   pointwise_conv1d, pointwise_conv2d)
from triton_dsd.modules import (DepthwiseConv1d, DepthwiseConv2d, DepthwiseSeparableDilatedConv1d,
                                DepthwiseSeparableDilatedConv2d, EagerDepthwiseSeparableDilatedConv1d,
                                EagerDepthwiseSeparableDilatedConv2d, PointwiseConv1d, PointwiseConv2d)
from triton_dsd.convert import convert, to_eager
from triton_dsd.ops import use_triton

__version__ = "0.1.0"

__all__ = [
    "depthwise_conv1d", "depthwise_conv2d", "pointwise_conv1d", "pointwise_conv2d", "dsd_conv1d",
    "dsd_conv2d", "DepthwiseConv1d", "DepthwiseConv2d", "PointwiseConv1d", "PointwiseConv2d",
    "DepthwiseSeparableDilatedConv1d", "DepthwiseSeparableDilatedConv2d",
    "EagerDepthwiseSeparableDilatedConv1d", "EagerDepthwiseSeparableDilatedConv2d", "convert",
    "to_eager", "use_triton",
]
