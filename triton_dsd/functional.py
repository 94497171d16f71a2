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
    _checks.check_depthwise(where, x, weight, bias, 1)
    (stride,) = _checks.positive_tuple(where, "stride", stride, 1)
    (dilation,) = _checks.positive_tuple(where, "dilation", dilation, 1)
    kernel = (weight.shape[2],)
    pads = _checks.resolve_padding(where, padding, kernel, (stride,), (dilation,))
    _checks.output_sizes(where, x.shape[2:], kernel, (stride,), pads, (dilation,))
    y = ops.depthwise(x.unsqueeze(2), weight.unsqueeze(2), bias, (1, stride), (0, 0) + pads,
                      (1, dilation), _deterministic(deterministic))
    return y.squeeze(2)
