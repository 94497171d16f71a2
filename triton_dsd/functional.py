"""Functional API: argument checks, padding resolution, 1D-as-2D views, dispatch to the ops.

The semantics are those of ``F.conv2d(x, w, b, stride, padding, dilation, groups=C)`` and
``F.conv1d``; 1D adds ``padding='causal'`` (left pad d*(K-1), output length = input length).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from triton_dsd import _checks, ops

Padding = Union[str, int, Sequence[int]]


def _deterministic(flag: Optional[bool]) -> bool:
    return bool(flag) or torch.are_deterministic_algorithms_enabled()


def _autocast(*tensors):
    """Cast as autocast casts a convolution's arguments: under ``torch.autocast`` on the input's
    device, floating tensors other than float64 go to the autocast dtype (custom ops are not
    autocast-aware by themselves)."""
    x = tensors[0]
    if not isinstance(x, Tensor):
        return tensors
    dev = x.device.type
    if dev not in ("cuda", "cpu") or not torch.is_autocast_enabled(dev):
        return tensors
    dtype = torch.get_autocast_dtype(dev)
    return tuple(t.to(dtype) if isinstance(t, Tensor) and t.is_floating_point()
                 and t.dtype != torch.float64 else t for t in tensors)


def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                     stride: Union[int, Sequence[int]] = 1, padding: Padding = 0,
                     dilation: Union[int, Sequence[int]] = 1, *,
                     deterministic: Optional[bool] = None) -> Tensor:
    """Dilated depthwise 2D convolution: ``F.conv2d(x, weight, bias, stride, padding, dilation, groups=C)``.

    x: (N, C, H, W), NCHW or channels_last (the output keeps the format, as eager does).
    weight: (C*m, 1, kH, kW) for a depth multiplier m >= 1. bias: (C*m,) or None.
    padding: int, (ph, pw), 'same' (stride 1; the odd element at the bottom/right) or 'valid'.
    deterministic: atomic-free weight-gradient reduction (also on under
    ``torch.use_deterministic_algorithms(True)``).
    """
    where = "triton_dsd.depthwise_conv2d"
    x, weight, bias = _autocast(x, weight, bias)
    _checks.check_depthwise(where, x, weight, bias, 2)
    stride = _checks.positive_tuple(where, "stride", stride, 2)
    dilation = _checks.positive_tuple(where, "dilation", dilation, 2)
    kernel = tuple(weight.shape[2:])
    pads = _checks.resolve_padding(where, padding, kernel, stride, dilation)
    _checks.output_sizes(where, x.shape[2:], kernel, stride, pads, dilation)
    return ops.depthwise(x, weight, bias, stride, pads, dilation, _deterministic(deterministic))


def depthwise_conv1d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                     stride: Union[int, Sequence[int]] = 1, padding: Padding = 0,
                     dilation: Union[int, Sequence[int]] = 1, *,
                     deterministic: Optional[bool] = None) -> Tensor:
    """Dilated depthwise 1D convolution: ``F.conv1d(x, weight, bias, stride, padding, dilation, groups=C)``.

    x: (N, C, L), contiguous or with channel-last strides (a transposed (N, L, C) tensor; the
    output keeps them). weight: (C*m, 1, K). padding: int, 'same', 'valid' or 'causal'.
    Runs as the 2D kernels on (N, C, 1, L) views: no copy.
    """
    where = "triton_dsd.depthwise_conv1d"
    x, weight, bias = _autocast(x, weight, bias)
    _checks.check_depthwise(where, x, weight, bias, 1)
    (stride,) = _checks.positive_tuple(where, "stride", stride, 1)
    (dilation,) = _checks.positive_tuple(where, "dilation", dilation, 1)
    kernel = (weight.shape[2],)
    pads = _checks.resolve_padding(where, padding, kernel, (stride,), (dilation,))
    _checks.output_sizes(where, x.shape[2:], kernel, (stride,), pads, (dilation,))
    y = ops.depthwise(x.unsqueeze(2), weight.unsqueeze(2), bias, (1, stride), (0, 0) + pads,
                      (1, dilation), _deterministic(deterministic))
    return y.squeeze(2)


def pointwise_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *,
                     deterministic: Optional[bool] = None) -> Tensor:
    """1x1 convolution ``F.conv2d(x, weight, bias)`` with weight (M, C, 1, 1): a Triton GEMM.

    NCHW and channels_last without layout copies (the output keeps the format). fp16/bf16 run
    on the tensor cores with fp32 accumulation; fp32 uses TF32 exactly when eager convolutions
    do (``torch.backends.cudnn.allow_tf32``).
    """
    where = "triton_dsd.pointwise_conv2d"
    x, weight, bias = _autocast(x, weight, bias)
    _checks.check_tensor(where, "x", x, 4, "(N, C, H, W)")
    _checks.check_pointwise(where, x.shape[1], weight, bias, 2, "x", x)
    return ops.pointwise(x, weight, bias, _deterministic(deterministic))


def pointwise_conv1d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *,
                     deterministic: Optional[bool] = None) -> Tensor:
    """1x1 convolution ``F.conv1d(x, weight, bias)`` with weight (M, C, 1): a Triton GEMM."""
    where = "triton_dsd.pointwise_conv1d"
    x, weight, bias = _autocast(x, weight, bias)
    _checks.check_tensor(where, "x", x, 3, "(N, C, L)")
    _checks.check_pointwise(where, x.shape[1], weight, bias, 1, "x", x)
    y = ops.pointwise(x.unsqueeze(2), weight.unsqueeze(2), bias, _deterministic(deterministic))
    return y.squeeze(2)


def _check_dsd(where: str, x, dw_weight, dw_bias, pw_weight, pw_bias, n_spatial: int):
    C, m = _checks.check_depthwise(where, x, dw_weight, dw_bias, n_spatial, "dw_weight", "dw_bias")
    _checks.check_pointwise(where, C * m, pw_weight, pw_bias, n_spatial, "x", x, "pw_weight",
                            "pw_bias")


def dsd_conv2d(x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor], pw_weight: Tensor,
               pw_bias: Optional[Tensor], stride: Union[int, Sequence[int]] = 1,
               padding: Padding = 0, dilation: Union[int, Sequence[int]] = 1, fused: bool = True,
               *, deterministic: Optional[bool] = None) -> Tensor:
    """The depthwise-separable dilated conv: ``F.conv2d(F.conv2d(x, dw_weight, dw_bias, stride,
    padding, dilation, groups=C), pw_weight, pw_bias)``.

    dw_weight (C*m, 1, kH, kW), dw_bias (C*m,) or None, pw_weight (M, C*m, 1, 1), pw_bias (M,) or
    None. fused=True: the forward is ONE kernel (the depthwise output stays on chip) and the
    backward keeps only x, recomputing the depthwise output. fused=False: two kernels, and the
    backward keeps x and the depthwise output, as eager does.
    """
    where = "triton_dsd.dsd_conv2d"
    x, dw_weight, dw_bias, pw_weight, pw_bias = _autocast(x, dw_weight, dw_bias, pw_weight, pw_bias)
    _check_dsd(where, x, dw_weight, dw_bias, pw_weight, pw_bias, 2)
    stride = _checks.positive_tuple(where, "stride", stride, 2)
    dilation = _checks.positive_tuple(where, "dilation", dilation, 2)
    kernel = tuple(dw_weight.shape[2:])
    pads = _checks.resolve_padding(where, padding, kernel, stride, dilation)
    _checks.output_sizes(where, x.shape[2:], kernel, stride, pads, dilation)
    return ops.dsd(x, dw_weight, dw_bias, pw_weight, pw_bias, stride, pads, dilation,
                   bool(fused), _deterministic(deterministic))


def dsd_conv1d(x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor], pw_weight: Tensor,
               pw_bias: Optional[Tensor], stride: Union[int, Sequence[int]] = 1,
               padding: Padding = 0, dilation: Union[int, Sequence[int]] = 1, fused: bool = True,
               *, deterministic: Optional[bool] = None) -> Tensor:
    """1D depthwise-separable dilated conv (padding may be 'causal'); weights (C*m, 1, K),
    (M, C*m, 1). Runs as the 2D kernels on (N, C, 1, L) views."""
    where = "triton_dsd.dsd_conv1d"
    x, dw_weight, dw_bias, pw_weight, pw_bias = _autocast(x, dw_weight, dw_bias, pw_weight, pw_bias)
    _check_dsd(where, x, dw_weight, dw_bias, pw_weight, pw_bias, 1)
    (stride,) = _checks.positive_tuple(where, "stride", stride, 1)
    (dilation,) = _checks.positive_tuple(where, "dilation", dilation, 1)
    kernel = (dw_weight.shape[2],)
    pads = _checks.resolve_padding(where, padding, kernel, (stride,), (dilation,))
    _checks.output_sizes(where, x.shape[2:], kernel, (stride,), pads, (dilation,))
    y = ops.dsd(x.unsqueeze(2), dw_weight.unsqueeze(2), dw_bias, pw_weight.unsqueeze(2), pw_bias,
                (1, stride), (0, 0) + pads, (1, dilation), bool(fused),
                _deterministic(deterministic))
    return y.squeeze(2)
