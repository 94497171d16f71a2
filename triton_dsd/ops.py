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

from triton_dsd import _runtime, epilogue, launchers, shapes
from triton_dsd.epilogue import Epilogue
from triton_dsd.shapes import is_channels_last_2d


def use_triton(x: Tensor) -> bool:
    """The device policy: Triton for CUDA tensors, and for CPU tensors under the interpreter.

    Raises :class:`~triton_dsd._runtime.InterpreterFlagChanged` if TRITON_INTERPRET changed
    after import (the kernels were defined for the other mode)."""
    _runtime.check_interpreter_flag()
    return x.is_cuda or (x.device.type == "cpu" and _runtime.INTERPRET)


def _require_triton(x: Tensor) -> None:
    if not use_triton(x):
        raise RuntimeError(
            "triton_dsd: the Triton ops run on CUDA tensors, or on CPU tensors with "
            "TRITON_INTERPRET=1 set before import; got a tensor on "
            f"'{x.device}'. The functional API falls back to eager PyTorch on its own.")


def _out_hw(x: Tensor, weight: Tensor, stride, padding, dilation) -> Tuple[int, int]:
    return shapes.out_sizes(x.shape[2:], weight.shape[2:], stride, padding, dilation)


def autocast_args(*tensors):
    """Cast as autocast casts a convolution's arguments: under ``torch.autocast`` on the first
    tensor's device, floating tensors other than float64 go to the autocast dtype. Used by the
    functional API (before its checks) and by the ops' own Autocast kernels (below)."""
    x = tensors[0]
    if not isinstance(x, Tensor):
        return tensors
    dev = x.device.type
    if dev not in ("cuda", "cpu") or not torch.is_autocast_enabled(dev):
        return tensors
    dtype = torch.get_autocast_dtype(dev)
    return tuple(t.to(dtype) if isinstance(t, Tensor) and t.is_floating_point()
                 and t.dtype != torch.float64 else t for t in tensors)


_LIB = torch.library.Library("triton_dsd", "FRAGMENT")


def _register_autocast(op, n_cast: Optional[int] = None) -> None:
    """An Autocast kernel (CUDA and CPU) for a forward op: cast its first ``n_cast`` arguments
    (all when None) with :func:`autocast_args` at the autocast dtype of the moment (bf16 or
    fp16), then run the op with autocast off, as PyTorch does for its own convolutions.
    (``torch.library.register_autocast`` would fix one dtype at registration.)"""
    name = op._name
    for dev in ("cuda", "cpu"):
        key = "Autocast" + torch._C._dispatch_key_for_device(dev)
        excluded = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

        def kernel(_keyset, *args, _excluded=excluded, **kwargs):
            k = len(args) if n_cast is None else n_cast
            args = autocast_args(*args[:k]) + tuple(args[k:])
            with torch._C._ExcludeDispatchKeyGuard(_excluded):
                return op(*args, **kwargs)

        _LIB.impl(name, kernel, key, with_keyset=True)


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
    return launchers.depthwise_fwd(x, weight, bias, stride, padding, dilation,
                                   is_channels_last_2d(x))


@depthwise_fwd.register_fake
def _(x, weight, bias, stride, padding, dilation, deterministic):
    oh, ow = _out_hw(x, weight, stride, padding, dilation)
    return _fake_like(x, (x.shape[0], weight.shape[0], oh, ow), is_channels_last_2d(x))


@torch.library.custom_op("triton_dsd::depthwise_bwd_input", mutates_args=())
def depthwise_bwd_input(grad: Tensor, weight: Tensor, x: Tensor, stride: List[int],
                        padding: List[int], dilation: List[int]) -> Tensor:
    """dx of the depthwise conv (``x`` gives shape and memory format only)."""
    _require_triton(grad)
    return launchers.depthwise_bwd_input(grad, weight, x, stride, padding, dilation,
                                         is_channels_last_2d(x))


@depthwise_bwd_input.register_fake
def _(grad, weight, x, stride, padding, dilation):
    return _fake_like(x, x.shape, is_channels_last_2d(x)).to(grad.dtype)


@torch.library.custom_op("triton_dsd::depthwise_bwd_weight", mutates_args=())
def depthwise_bwd_weight(grad: Tensor, x: Tensor, weight: Tensor, stride: List[int],
                         padding: List[int], dilation: List[int], need_bias: bool,
                         deterministic: bool) -> Tuple[Tensor, Tensor]:
    """(dw, db) of the depthwise conv; db is empty unless ``need_bias``."""
    _require_triton(grad)
    return launchers.depthwise_bwd_weight(grad, x, weight, stride, padding, dilation,
                                          need_bias, deterministic)


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


def _depthwise_grads(grad, x, weight, geometry, need_x, need_w, need_b, deterministic):
    dx = dw = db = None
    if need_x:
        dx = depthwise_bwd_input(grad, weight, x, *geometry)
    if need_w or need_b:
        dw, db = depthwise_bwd_weight(grad, x, weight, *geometry, need_b, deterministic)
        dw = dw if need_w else None
        db = db if need_b else None
    return dx, dw, db


def _depthwise_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    dx, dw, db = _depthwise_grads(grad, x, weight, ctx.geometry, need_x, need_w,
                                  need_b and ctx.has_bias, ctx.deterministic)
    return dx, dw, db, None, None, None, None


depthwise_fwd.register_autograd(_depthwise_backward, setup_context=_depthwise_setup)
_register_autocast(depthwise_fwd)


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


# --------------------------------------------------------------------------- pointwise
@torch.library.custom_op("triton_dsd::pointwise_fwd", mutates_args=())
def pointwise_fwd(x: Tensor, weight: Tensor, bias: Optional[Tensor], deterministic: bool) -> Tensor:
    """1x1 conv forward, a Triton GEMM (``deterministic`` is for the backward)."""
    _require_triton(x)
    return launchers.pointwise_fwd(x, weight, bias, is_channels_last_2d(x))


@pointwise_fwd.register_fake
def _(x, weight, bias, deterministic):
    return _fake_like(x, (x.shape[0], weight.shape[0], *x.shape[2:]), is_channels_last_2d(x))


@torch.library.custom_op("triton_dsd::pointwise_bwd_input", mutates_args=())
def pointwise_bwd_input(grad: Tensor, weight: Tensor, x: Tensor) -> Tensor:
    """dx of a 1x1 conv (``x`` gives the memory format only)."""
    _require_triton(grad)
    return launchers.pointwise_bwd_input(grad, weight, is_channels_last_2d(x))


@pointwise_bwd_input.register_fake
def _(grad, weight, x):
    return _fake_like(grad, (grad.shape[0], weight.shape[1], *grad.shape[2:]),
                      is_channels_last_2d(x))


@torch.library.custom_op("triton_dsd::pointwise_bwd_weight", mutates_args=())
def pointwise_bwd_weight(grad: Tensor, x: Tensor, weight: Tensor, need_bias: bool,
                         deterministic: bool) -> Tuple[Tensor, Tensor]:
    """(dW, db) of a 1x1 conv; db is empty unless ``need_bias``."""
    _require_triton(grad)
    return launchers.pointwise_bwd_weight(grad, x, weight, need_bias, deterministic)


@pointwise_bwd_weight.register_fake
def _(grad, x, weight, need_bias, deterministic):
    return grad.new_empty(weight.shape), grad.new_empty((weight.shape[0],) if need_bias else (0,))


def _pointwise_setup(ctx, inputs, output):
    x, weight, bias, deterministic = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None
    ctx.deterministic = deterministic


def _pointwise_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    dx, dw, db = _pointwise_grads(grad, x, weight, need_x, need_w, need_b and ctx.has_bias,
                                  ctx.deterministic)
    return dx, dw, db, None


def _pointwise_grads(grad, z, weight, need_z, need_w, need_b, deterministic):
    dz = dw = db = None
    if need_z:
        dz = pointwise_bwd_input(grad, weight, z)
    if need_w or need_b:
        dw, db = pointwise_bwd_weight(grad, z, weight, need_b, deterministic)
        dw = dw if need_w else None
        db = db if need_b else None
    return dz, dw, db


pointwise_fwd.register_autograd(_pointwise_backward, setup_context=_pointwise_setup)
_register_autocast(pointwise_fwd)


def pointwise(x: Tensor, weight: Tensor, bias: Optional[Tensor], deterministic: bool) -> Tensor:
    """1x1 conv by the device policy: the Triton custom op, or eager PyTorch."""
    if use_triton(x):
        return pointwise_fwd(x, weight, bias, deterministic)
    return F.conv2d(x, weight, bias)


# --------------------------------------------------------------------------- fused layer
#: positions of the dsd_fwd arguments autocast casts (x and the four weights/biases); the
#: epilogue's scales and shifts stay in the accumulator dtype, as batch norm's do
_DSD_CAST = 5


@torch.library.custom_op("triton_dsd::dsd_fwd", mutates_args=())
def dsd_fwd(x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor], pw_weight: Tensor,
            pw_bias: Optional[Tensor], stride: List[int], padding: List[int],
            dilation: List[int], deterministic: bool, mid_scale: Optional[Tensor] = None,
            mid_shift: Optional[Tensor] = None, mid_act: int = 0,
            out_scale: Optional[Tensor] = None, out_shift: Optional[Tensor] = None,
            out_act: int = 0, mid_norm: int = 0, mid_eps: float = 1e-5) -> Tensor:
    """The whole separable layer in ONE kernel launch; the depthwise output never leaves the
    chip. With epilogues (``triton_dsd.epilogue``): act_out((act_mid(norm(dw(x)) * mid_scale
    + mid_shift) @ pw + b) * out_scale + out_shift), norm a layer norm over the C*m channels
    of each pixel when ``mid_norm`` (``epilogue.NORMS``; only where
    ``launchers.dsd_mid_norm_fits``); scales and shifts come in pairs (both or neither),
    contiguous, in the accumulator dtype."""
    _require_triton(x)
    epi = Epilogue(mid_scale, mid_shift, mid_act, out_scale, out_shift, out_act, mid_norm,
                   mid_eps)
    return launchers.dsd_fwd(x, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding,
                             dilation, is_channels_last_2d(x),
                             epilogue=None if epi.is_identity else epi)


@dsd_fwd.register_fake
def _(x, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation, deterministic,
      mid_scale=None, mid_shift=None, mid_act=0, out_scale=None, out_shift=None, out_act=0,
      mid_norm=0, mid_eps=1e-5):
    oh, ow = _out_hw(x, dw_weight, stride, padding, dilation)
    return _fake_like(x, (x.shape[0], pw_weight.shape[0], oh, ow), is_channels_last_2d(x))


def _dsd_setup(ctx, inputs, output):
    (x, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation, deterministic,
     mid_scale, mid_shift, mid_act, out_scale, out_shift, out_act, mid_norm, mid_eps) = inputs
    # the only activation kept is x: z is recomputed in the backward
    ctx.save_for_backward(x, dw_weight, dw_bias, pw_weight, pw_bias, mid_scale, mid_shift,
                          out_scale, out_shift)
    ctx.geometry = (stride, padding, dilation)
    ctx.has_bias = (dw_bias is not None, pw_bias is not None)
    ctx.acts = (mid_act, out_act)
    ctx.norm = (mid_norm, mid_eps)
    ctx.deterministic = deterministic


_CHANNELS = (0, 2, 3)  # the axes a per-channel gradient sums over


def _channel_norm(v: Tensor, norm: int, eps: float):
    """(v normalised over its channels (axis 1) per pixel, 1/sqrt(var + eps)) for a layer
    norm (``norm``), else (v, None); biased variance, as F.layer_norm."""
    if not norm:
        return v, None
    mean = v.mean(1, keepdim=True)
    rstd = torch.rsqrt(v.var(1, unbiased=False, keepdim=True) + eps)
    return (v - mean) * rstd, rstd


def _per_channel(v: Tensor) -> Tensor:
    return v.view(1, -1, 1, 1)


def _dsd_backward(ctx, grad):
    """Gradients of act_out((act_mid(û * s1 + t1) @ wp + bp) * s2 + t2), u = dw(x) + bd,
    û = u, or with mid_norm û = (u - mean_c u) * r, r = 1/sqrt(var_c u + eps) (per pixel, over
    the channels), recomputing u from x (one depthwise forward; one more pointwise forward
    when the output epilogue needs its input y0):
        dy1 = dy * act_out'(y1)    ds2 = sum dy1 * y0    dt2 = sum dy1    dy0 = dy1 * s2
        dv, dwp, dbp from the pointwise backward of dy0
        da = dv * act_mid'(a)      ds1 = sum da * û      dt1 = sum da     dû = da * s1
        du = dû, or with mid_norm  du = r * (dû - mean_c dû - û * mean_c(dû * û))
        dx, dwd, dbd from the depthwise backward of du
    (sums over the batch and pixels; the epilogue arithmetic in the accumulator dtype)."""
    x, dw_weight, dw_bias, pw_weight, pw_bias, s1, t1, s2, t2 = ctx.saved_tensors
    mid_act, out_act = ctx.acts
    mid_norm, mid_eps = ctx.norm
    need = ctx.needs_input_grad
    need_dwb, need_pwb = need[2] and ctx.has_bias[0], need[4] and ctx.has_bias[1]
    det = ctx.deterministic
    u = depthwise_fwd(x, dw_weight, dw_bias, *ctx.geometry, det)
    has_mid = s1 is not None or mid_act != 0 or mid_norm != 0
    has_out = s2 is not None or out_act != 0
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    d_s1 = d_t1 = d_s2 = d_t2 = None
    if has_mid:
        uf = u.to(acc)
        uh, rstd = _channel_norm(uf, mid_norm, mid_eps)
        a = uh * _per_channel(s1) + _per_channel(t1) if s1 is not None else uh
        v = epilogue.act_forward(a, mid_act).to(x.dtype)
    else:
        v = u
    dy0 = grad
    if has_out:
        dy1 = grad.to(acc)
        need_y0 = out_act != 0 or (s2 is not None and need[12])
        if need_y0:
            y0 = pointwise_fwd(v, pw_weight, pw_bias, det).to(acc)
        if out_act != 0:
            y1 = y0 * _per_channel(s2) + _per_channel(t2) if s2 is not None else y0
            dy1 = dy1 * epilogue.act_grad(y1, out_act)
        if s2 is not None:
            d_s2 = (dy1 * y0).sum(_CHANNELS) if need[12] else None
            d_t2 = dy1.sum(_CHANNELS) if need[13] else None
            dy1 = dy1 * _per_channel(s2)
        dy0 = dy1.to(grad.dtype)
    need_mid_grads = has_mid and (need[9] or need[10])
    need_z = need[0] or need[1] or need_dwb or need_mid_grads
    dv, dpw, dpb = _pointwise_grads(dy0, v, pw_weight, need_z, need[3], need_pwb, det)
    dx = ddw = ddb = None
    if need_z:
        du = dv
        if has_mid:
            da = dv.to(acc)
            if mid_act != 0:
                da = da * epilogue.act_grad(a, mid_act)
            if s1 is not None:
                d_s1 = (da * uh).sum(_CHANNELS) if need[9] else None
                d_t1 = da.sum(_CHANNELS) if need[10] else None
                da = da * _per_channel(s1)
            if mid_norm:  # through the layer norm over channels
                da = rstd * (da - da.mean(1, keepdim=True)
                             - uh * (da * uh).mean(1, keepdim=True))
            du = da.to(dv.dtype)
        if need[0] or need[1] or need_dwb:
            dx, ddw, ddb = _depthwise_grads(du, x, dw_weight, ctx.geometry, need[0], need[1],
                                            need_dwb, det)
    return (dx, ddw, ddb, dpw, dpb, None, None, None, None, d_s1, d_t1, None, d_s2, d_t2,
            None, None, None)


dsd_fwd.register_autograd(_dsd_backward, setup_context=_dsd_setup)
_register_autocast(dsd_fwd, _DSD_CAST)


def _eager_epilogue(v: Tensor, scale: Optional[Tensor], shift: Optional[Tensor],
                    act: int, norm: int = 0, eps: float = 1e-5) -> Tensor:
    """The epilogue eagerly, in the accumulator dtype, rounded back to v's dtype (as the
    kernel rounds z before the GEMM and y on store)."""
    if scale is None and act == 0 and not norm:
        return v
    acc = torch.float64 if v.dtype == torch.float64 else torch.float32
    return epilogue.apply(_channel_norm(v.to(acc), norm, eps)[0], scale, shift, act).to(v.dtype)


def dsd(x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor], pw_weight: Tensor,
        pw_bias: Optional[Tensor], stride: Sequence[int], padding: Sequence[int],
        dilation: Sequence[int], fused: bool, deterministic: bool,
        epi: Optional[Epilogue] = None) -> Tensor:
    """The separable layer by the device policy: fused Triton, two Triton stages, or eager
    (with the epilogues, ``epi``, between and after: in the kernel when fused, eagerly
    otherwise; a layer norm over more channels than one program holds runs unfused)."""
    epi = epi or Epilogue()
    # a layer norm between the stages needs every channel of a pixel in one program
    norm_fits = not epi.mid_norm or launchers.dsd_mid_norm_fits(dw_weight.shape[0], x.dtype)
    if use_triton(x) and fused and norm_fits:
        return dsd_fwd(x, dw_weight, dw_bias, pw_weight, pw_bias, list(stride), list(padding),
                       list(dilation), deterministic, *epi)
    z = depthwise(x, dw_weight, dw_bias, stride, padding, dilation, deterministic)
    z = _eager_epilogue(z, epi.mid_scale, epi.mid_shift, epi.mid_act, epi.mid_norm,
                        epi.mid_eps)
    y = pointwise(z, pw_weight, pw_bias, deterministic)
    return _eager_epilogue(y, epi.out_scale, epi.out_shift, epi.out_act)


# --------------------------------------------------------------------------- decode step
@torch.library.custom_op("triton_dsd::dsd_step", mutates_args=("state",))
def dsd_step(x: Tensor, state: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor],
             pw_weight: Tensor, pw_bias: Optional[Tensor], dilation: int, deterministic: bool,
             mid_scale: Optional[Tensor] = None, mid_shift: Optional[Tensor] = None,
             mid_act: int = 0, out_scale: Optional[Tensor] = None,
             out_shift: Optional[Tensor] = None, out_act: int = 0) -> Tensor:
    """One decode frame of the causal separable layer in ONE launch: y_t (N, M) from x_t
    (N, C) and the conv state (N, C, dilation*(K-1)), which moves one frame in place.
    Inference only (no autograd); weights as 4D (1D as (.., 1, K) views)."""
    _require_triton(x)
    epi = Epilogue(mid_scale, mid_shift, mid_act, out_scale, out_shift, out_act)
    return launchers.dsd_step(x, state, dw_weight, dw_bias, pw_weight, pw_bias, dilation,
                              deterministic, None if epi.is_identity else epi)


@dsd_step.register_fake
def _(x, state, dw_weight, dw_bias, pw_weight, pw_bias, dilation, deterministic,
      mid_scale=None, mid_shift=None, mid_act=0, out_scale=None, out_shift=None, out_act=0):
    return x.new_empty((x.shape[0], pw_weight.shape[0]))


def eager_step(x: Tensor, state: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor],
                pw_weight: Tensor, pw_bias: Optional[Tensor], dilation: int,
                epi: Epilogue) -> Tensor:
    """The step in eager PyTorch (CPU without the interpreter; the benchmarks' eager decode):
    the same rounding points."""
    frames = torch.cat([state, x.unsqueeze(-1)], dim=-1)
    u = F.conv1d(frames, dw_weight.flatten(2), dw_bias, dilation=dilation,
                 groups=x.shape[1])[..., -1]
    u = _eager_epilogue(u, epi.mid_scale, epi.mid_shift, epi.mid_act)
    y = F.linear(u, pw_weight.flatten(1), pw_bias)
    state.copy_(frames[..., 1:])
    return _eager_epilogue(y, epi.out_scale, epi.out_shift, epi.out_act)


def step(x: Tensor, state: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor],
         pw_weight: Tensor, pw_bias: Optional[Tensor], dilation: int, deterministic: bool,
         epi: Optional[Epilogue] = None) -> Tensor:
    """The decode step by the device policy (Triton, or eager on CPU), without autograd."""
    epi = epi or Epilogue()
    with torch.no_grad():
        if use_triton(x):
            return dsd_step(x, state, dw_weight, dw_bias, pw_weight, pw_bias, int(dilation),
                            deterministic, *epi[:6])
        return eager_step(x, state, dw_weight, dw_bias, pw_weight, pw_bias, int(dilation),
                           epi)
