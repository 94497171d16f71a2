"""Operator layer: ``torch.library`` custom ops over the Triton launchers, plus the device policy.

Device policy: CUDA tensors run the Triton kernels. CPU tensors run the Triton kernels under
the Triton interpreter when ``TRITON_INTERPRET=1`` is set, and eager PyTorch otherwise
(:func:`use_triton`). All ops here take 4D tensors; 1D problems arrive as (N, C, 1, L) views.
``padding`` is always (top, bottom, left, right).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from triton_dsd import launch


def use_triton(x: Tensor) -> bool:
    """The device policy: Triton for CUDA tensors, and for CPU tensors under the interpreter."""
    return x.is_cuda or (x.device.type == "cpu" and launch.interpreting())


def _require_triton(x: Tensor) -> None:
    if not use_triton(x):
        raise RuntimeError(
            "triton_dsd: the Triton ops run on CUDA tensors, or on CPU tensors with "
            "TRITON_INTERPRET=1 set before import; got a tensor on "
            f"'{x.device}'. The functional API falls back to eager PyTorch on its own.")


def _out_hw(x: Tensor, weight: Tensor, stride, padding, dilation) -> Tuple[int, int]:
    H, W = x.shape[2:]
    KH, KW = weight.shape[2:]
    return (launch.out_size(H, KH, stride[0], dilation[0], padding[0], padding[1]),
            launch.out_size(W, KW, stride[1], dilation[1], padding[2], padding[3]))


def _fake_like(x: Tensor, shape: Sequence[int], channels_last: bool) -> Tensor:
    n, c, h, w = shape
    if channels_last:
        return x.new_empty((n, h, w, c)).permute(0, 3, 1, 2)
    return x.new_empty((n, c, h, w))


# --------------------------------------------------------------------------- depthwise
@torch.library.custom_op("triton_dsd::depthwise_fwd", mutates_args=())
def depthwise_fwd(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int],
                  padding: List[int], dilation: List[int], deterministic: bool) -> Tensor:
    """Dilated depthwise conv forward (``deterministic`` is for the backward)."""
    _require_triton(x)
    return launch.depthwise_fwd(x, weight, bias, stride, padding, dilation,
                                launch.is_channels_last_2d(x))


@depthwise_fwd.register_fake
def _(x, weight, bias, stride, padding, dilation, deterministic):
    oh, ow = _out_hw(x, weight, stride, padding, dilation)
    return _fake_like(x, (x.shape[0], weight.shape[0], oh, ow), launch.is_channels_last_2d(x))


@torch.library.custom_op("triton_dsd::depthwise_bwd_input", mutates_args=())
def depthwise_bwd_input(grad: Tensor, weight: Tensor, x: Tensor, stride: List[int],
                        padding: List[int], dilation: List[int]) -> Tensor:
    """dx of the depthwise conv (``x`` gives shape and memory format only)."""
    _require_triton(grad)
    return launch.depthwise_bwd_input(grad, weight, x, stride, padding, dilation,
                                      launch.is_channels_last_2d(x))


@depthwise_bwd_input.register_fake
def _(grad, weight, x, stride, padding, dilation):
    return _fake_like(x, x.shape, launch.is_channels_last_2d(x)).to(grad.dtype)


@torch.library.custom_op("triton_dsd::depthwise_bwd_weight", mutates_args=())
def depthwise_bwd_weight(grad: Tensor, x: Tensor, weight: Tensor, stride: List[int],
                         padding: List[int], dilation: List[int], need_bias: bool,
                         deterministic: bool) -> Tuple[Tensor, Tensor]:
    """(dw, db) of the depthwise conv; db is empty unless ``need_bias``."""
    _require_triton(grad)
    return launch.depthwise_bwd_weight(grad, x, weight, stride, padding, dilation, need_bias,
                                       deterministic)


@depthwise_bwd_weight.register_fake
def _(grad, x, weight, stride, padding, dilation, need_bias, deterministic):
    db = grad.new_empty((weight.shape[0],) if need_bias else (0,))
    return grad.new_empty(weight.shape), db


def _depthwise_setup(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation, deterministic = inputs
    ctx.save_for_backward(x, weight)
    ctx.geometry = (stride, padding, dilation)
    ctx.has_bias = bias is not None
    ctx.deterministic = deterministic


def _depthwise_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    need_b = need_b and ctx.has_bias
    dx = dw = db = None
    if need_x:
        dx = depthwise_bwd_input(grad, weight, x, *ctx.geometry)
    if need_w or need_b:
        dw, db = depthwise_bwd_weight(grad, x, weight, *ctx.geometry, need_b, ctx.deterministic)
        dw = dw if need_w else None
        db = db if need_b else None
    return dx, dw, db, None, None, None, None


depthwise_fwd.register_autograd(_depthwise_backward, setup_context=_depthwise_setup)


def _eager_depthwise(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride, padding,
                     dilation) -> Tensor:
    pt, pb, pl, pr = padding
    if pt != pb or pl != pr:
        x = F.pad(x, (pl, pr, pt, pb))
        pt = pl = 0
    return F.conv2d(x, weight, bias, tuple(stride), (pt, pl), tuple(dilation), groups=x.shape[1])


def depthwise(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Sequence[int],
              padding: Sequence[int], dilation: Sequence[int], deterministic: bool) -> Tensor:
    """Depthwise conv by the device policy: the Triton custom op, or eager PyTorch."""
    if use_triton(x):
        return depthwise_fwd(x, weight, bias, list(stride), list(padding), list(dilation),
                             deterministic)
    return _eager_depthwise(x, weight, bias, stride, padding, dilation)
