"""Functional API: argument checks, padding resolution, 1D-as-2D views, dispatch to the ops.

The semantics are those of ``F.conv2d(x, w, b, stride, padding, dilation, groups=C)`` and
``F.conv1d``, unbatched inputs included; 1D adds ``padding='causal'`` (left pad d*(K-1),
output length = input length). Under ``torch.autocast`` the arguments are cast as autocast
casts a convolution's, before the checks (so fp32 weights with a bf16 input are fine there).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from triton_dsd import _checks, ops, shapes
from triton_dsd.shapes import Padding

IntOrTuple = Union[int, Sequence[int]]


def _deterministic(flag: Optional[bool]) -> bool:
    return bool(flag) or torch.are_deterministic_algorithms_enabled()


def _batched(x, dim: int):
    """(x with a batch axis, whether one was added): F.conv accepts unbatched inputs."""
    if isinstance(x, Tensor) and x.dim() == dim + 1:
        return x.unsqueeze(0), True
    return x, False


def _as_2d(t: Tensor, dim: int) -> Tensor:
    """1D tensors run as 2D ones with H = 1 ((N, C, L) -> (N, C, 1, L)): a view, no copy."""
    return t.unsqueeze(2) if dim == 1 else t


def _geometry(where: str, dim: int, x: Tensor, kernel, stride, padding, dilation):
    """(stride, pads, dilation) as the 2D ops take them, validated, output checked non-empty."""
    stride = shapes.positive_tuple(where, "stride", stride, dim)
    dilation = shapes.positive_tuple(where, "dilation", dilation, dim)
    pads = shapes.resolve_padding(padding, kernel, stride, dilation, where)
    shapes.check_out_sizes(where, x.shape[2:], kernel, stride, pads, dilation)
    if dim == 1:
        return (1,) + stride, (0, 0) + pads, (1,) + dilation
    return stride, pads, dilation


def _finish(y: Tensor, dim: int, unbatched: bool) -> Tensor:
    if dim == 1:
        y = y.squeeze(2)
    return y.squeeze(0) if unbatched else y


def _depthwise(where: str, dim: int, x, weight, bias, stride, padding, dilation,
               deterministic) -> Tensor:
    x, weight, bias = ops.autocast_args(x, weight, bias)
    x, unbatched = _batched(x, dim)
    _checks.check_depthwise(where, x, weight, bias, dim)
    geo = _geometry(where, dim, x, tuple(weight.shape[2:]), stride, padding, dilation)
    y = ops.depthwise(_as_2d(x, dim), _as_2d(weight, dim), bias, *geo,
                      _deterministic(deterministic))
    return _finish(y, dim, unbatched)


def _pointwise(where: str, dim: int, x, weight, bias, deterministic) -> Tensor:
    x, weight, bias = ops.autocast_args(x, weight, bias)
    x, unbatched = _batched(x, dim)
    _checks.check_input(where, x, dim)
    _checks.check_pointwise(where, x.shape[1], weight, bias, dim, "x", x)
    y = ops.pointwise(_as_2d(x, dim), _as_2d(weight, dim), bias, _deterministic(deterministic))
    return _finish(y, dim, unbatched)


def _dsd(where: str, dim: int, x, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding,
         dilation, fused, deterministic) -> Tensor:
    if pw_weight is None:
        raise TypeError(f"{where}: `pw_weight` is required (the 1x1 weight (M, C*m"
                        f"{', 1' * dim})); the biases are optional")
    x, dw_weight, dw_bias, pw_weight, pw_bias = ops.autocast_args(
        x, dw_weight, dw_bias, pw_weight, pw_bias)
    x, unbatched = _batched(x, dim)
    C, m = _checks.check_depthwise(where, x, dw_weight, dw_bias, dim, "dw_weight", "dw_bias")
    _checks.check_pointwise(where, C * m, pw_weight, pw_bias, dim, "x", x, "pw_weight",
                            "pw_bias")
    geo = _geometry(where, dim, x, tuple(dw_weight.shape[2:]), stride, padding, dilation)
    y = ops.dsd(_as_2d(x, dim), _as_2d(dw_weight, dim), dw_bias, _as_2d(pw_weight, dim),
                pw_bias, *geo, bool(fused), _deterministic(deterministic))
    return _finish(y, dim, unbatched)


def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                     stride: IntOrTuple = 1, padding: Padding = 0, dilation: IntOrTuple = 1, *,
                     deterministic: Optional[bool] = None) -> Tensor:
    """Dilated depthwise 2D convolution: ``F.conv2d(x, weight, bias, stride, padding, dilation, groups=C)``.

    x: (N, C, H, W) or unbatched (C, H, W), NCHW or channels_last (the output keeps the
    format, as eager does). weight: (C*m, 1, kH, kW) for a depth multiplier m >= 1. bias:
    (C*m,) or None. padding: int, (ph, pw), 'same' (stride 1; the odd element at the
    bottom/right) or 'valid'. deterministic: atomic-free weight-gradient reduction (also on
    under ``torch.use_deterministic_algorithms(True)``).
    """
    return _depthwise("triton_dsd.depthwise_conv2d", 2, x, weight, bias, stride, padding,
                      dilation, deterministic)


def depthwise_conv1d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                     stride: IntOrTuple = 1, padding: Padding = 0, dilation: IntOrTuple = 1, *,
                     deterministic: Optional[bool] = None) -> Tensor:
    """Dilated depthwise 1D convolution: ``F.conv1d(x, weight, bias, stride, padding, dilation, groups=C)``.

    x: (N, C, L) or unbatched (C, L), contiguous or with channel-last strides (a transposed
    (N, L, C) tensor; the output keeps them). weight: (C*m, 1, K). padding: int, 'same',
    'valid' or 'causal'. Runs as the 2D kernels on (N, C, 1, L) views: no copy.
    """
    return _depthwise("triton_dsd.depthwise_conv1d", 1, x, weight, bias, stride, padding,
                      dilation, deterministic)


def pointwise_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *,
                     deterministic: Optional[bool] = None) -> Tensor:
    """1x1 convolution ``F.conv2d(x, weight, bias)`` with weight (M, C, 1, 1): a Triton GEMM.

    NCHW and channels_last without layout copies (the output keeps the format). fp16/bf16 run
    on the tensor cores with fp32 accumulation; fp32 uses TF32 exactly when eager convolutions
    do (``torch.backends.cudnn.allow_tf32``).
    """
    return _pointwise("triton_dsd.pointwise_conv2d", 2, x, weight, bias, deterministic)


def pointwise_conv1d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *,
                     deterministic: Optional[bool] = None) -> Tensor:
    """1x1 convolution ``F.conv1d(x, weight, bias)`` with weight (M, C, 1): a Triton GEMM."""
    return _pointwise("triton_dsd.pointwise_conv1d", 1, x, weight, bias, deterministic)


def dsd_conv2d(x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor] = None,
               pw_weight: Optional[Tensor] = None, pw_bias: Optional[Tensor] = None,
               stride: IntOrTuple = 1, padding: Padding = 0, dilation: IntOrTuple = 1,
               fused: bool = True, *, deterministic: Optional[bool] = None) -> Tensor:
    """The depthwise-separable dilated conv: ``F.conv2d(F.conv2d(x, dw_weight, dw_bias, stride,
    padding, dilation, groups=C), pw_weight, pw_bias)``.

    dw_weight (C*m, 1, kH, kW), pw_weight (M, C*m, 1, 1) (required, by position or keyword),
    biases (C*m,) / (M,) or None: ``dsd_conv2d(x, dw, pw_weight=pw)`` has no biases.
    fused=True: the forward is ONE kernel (the depthwise output stays on chip) and the
    backward keeps only x, recomputing the depthwise output. fused=False: two kernels, and the
    backward keeps x and the depthwise output, as eager does.
    """
    return _dsd("triton_dsd.dsd_conv2d", 2, x, dw_weight, dw_bias, pw_weight, pw_bias, stride,
                padding, dilation, fused, deterministic)


def dsd_conv1d(x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor] = None,
               pw_weight: Optional[Tensor] = None, pw_bias: Optional[Tensor] = None,
               stride: IntOrTuple = 1, padding: Padding = 0, dilation: IntOrTuple = 1,
               fused: bool = True, *, deterministic: Optional[bool] = None) -> Tensor:
    """1D depthwise-separable dilated conv (padding may be 'causal'); weights (C*m, 1, K),
    (M, C*m, 1). Runs as the 2D kernels on (N, C, 1, L) views."""
    return _dsd("triton_dsd.dsd_conv1d", 1, x, dw_weight, dw_bias, pw_weight, pw_bias, stride,
                padding, dilation, fused, deterministic)
