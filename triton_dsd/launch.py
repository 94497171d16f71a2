"""Launch glue: grids, strides, output allocation, config choice. Never the math.

Every Triton launch of the package goes through :func:`_launch`, which counts launches per
kernel (tests use :data:`LAUNCHES` to prove a Triton kernel ran). Outputs are allocated by
:func:`new_output`, which fills them with NaN while :data:`POISON` is set (tests set it, so an
element a kernel forgot to write cannot pass).

All launchers take 4D tensors (N, C, H, W); 1D problems arrive as (N, C, 1, L) views.
"""
from __future__ import annotations

import collections
import contextlib
import os
from typing import Dict, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from triton_dsd.kernels import depthwise as _dw

#: launches per kernel name since import (or since the last ``LAUNCHES.clear()``)
LAUNCHES: collections.Counter = collections.Counter()
#: fill every kernel-written output with NaN before the launch (tests turn this on)
POISON: bool = os.environ.get("TRITON_DSD_POISON", "0") == "1"

_INT32_MAX = 2**31 - 1


def interpreting() -> bool:
    """True when Triton runs kernels on CPU tensors through its interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


#: while not None, launches are recorded here instead of run (see :func:`capture_launches`)
_CAPTURE: Optional[list] = None


def _launch(kernel, grid, *args, **kwargs):
    if _CAPTURE is not None:
        _CAPTURE.append((kernel, grid, args, kwargs))
        return
    LAUNCHES[kernel.fn.__name__] += 1
    kernel[grid](*args, **kwargs)


@contextlib.contextmanager
def capture_launches():
    """Record (kernel, grid, args, kwargs) of every launch instead of running it.

    The offline compile report uses it to compile exactly what a launcher would launch.
    """
    global _CAPTURE
    saved, _CAPTURE = _CAPTURE, []
    try:
        yield _CAPTURE
    finally:
        _CAPTURE = saved


def is_channels_last_2d(t: torch.Tensor) -> bool:
    """The memory format eager convolution gives its output for input ``t`` (N, C, H, W).

    Follows c10's stride rule (``is_channels_last_strides_2d``): strides must grow in the
    order C, W, H, N. Ambiguous tensors (C == 1 or H == W == 1) keep what their strides say.
    """
    if t.dim() != 4 or t.stride(1) == 0:
        return False
    lo = 0
    for d in (1, 3, 2, 0):
        if t.size(d) == 0 or t.stride(d) < lo:
            return False
        if d == 0 and lo == t.stride(1):
            return False
        lo = t.stride(d) * (t.size(d) if t.size(d) > 1 else 1)
    return True


def new_output(shape: Sequence[int], like: torch.Tensor, channels_last: bool,
               dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Allocate a 4D (N, C, H, W) output in NCHW or channels_last order (poisoned if POISON)."""
    n, c, h, w = shape
    dtype = dtype or like.dtype
    if channels_last:
        out = torch.empty((n, h, w, c), dtype=dtype, device=like.device).permute(0, 3, 1, 2)
    else:
        out = torch.empty((n, c, h, w), dtype=dtype, device=like.device)
    if POISON and out.dtype.is_floating_point and not out.is_meta:
        out.fill_(float("nan"))
    return out


def _needs_int64(*tensors: torch.Tensor) -> bool:
    """True if an element offset of any tensor can pass int32 (computed from sizes and strides)."""
    for t in tensors:
        span = sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()) if s > 0)
        if span + 1 > _INT32_MAX or t.numel() > _INT32_MAX:
            return True
    return False


def _acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def depthwise_config(C: int, OH: int, OW: int, channels_last: bool,
                     interpreter: Optional[bool] = None) -> Dict[str, int]:
    """Default tile for a depthwise problem (the tuned store of issue 5 will override it).

    channels_last: channels are contiguous, so the tile is wide in C (16-byte loads) and a
    few pixels deep. NCHW: the tile is a patch of rows along W for one or a few channels.
    Under the interpreter each program costs ~0.1 s whatever its size, so tiles are larger.
    """
    interp = interpreting() if interpreter is None else interpreter
    budget = 4096 if interp else 1024
    if channels_last:
        block_c = min(_pow2(C), 64)
        block_w = min(_pow2(OW), max(1, budget // block_c), 16 if OH > 1 else 256)
    else:
        block_w = min(_pow2(OW), 256 if interp else 64)
        block_c = min(_pow2(C), max(1, budget // (block_w * 16)), 64 if interp else 4)
    block_h = min(_pow2(OH), max(1, budget // (block_c * block_w)))
    return dict(BLOCK_H=block_h, BLOCK_W=block_w, BLOCK_C=block_c, num_warps=4)


def _tiles(OH: int, OW: int, cfg: Dict[str, int]) -> Tuple[int, int]:
    return triton.cdiv(OH, cfg["BLOCK_H"]), triton.cdiv(OW, cfg["BLOCK_W"])


def _geometry(stride, pads, dilation, K):
    (sh, sw), (pt, _pb, pl, _pr), (dh, dw), (kh, kw) = stride, pads, dilation, K
    return dict(KH=kh, KW=kw, STRIDE_H=sh, STRIDE_W=sw, DIL_H=dh, DIL_W=dw), (pt, pl)


def out_size(size: int, k: int, s: int, d: int, pad_lo: int, pad_hi: int) -> int:
    return (size + pad_lo + pad_hi - d * (k - 1) - 1) // s + 1


def depthwise_fwd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  stride: Sequence[int], pads: Sequence[int], dilation: Sequence[int],
                  channels_last: bool) -> torch.Tensor:
    """y = depthwise(x); pads = (top, bottom, left, right)."""
    N, C_in, H, W = x.shape
    C_out, _, KH, KW = weight.shape
    OH = out_size(H, KH, stride[0], dilation[0], pads[0], pads[1])
    OW = out_size(W, KW, stride[1], dilation[1], pads[2], pads[3])
    y = new_output((N, C_out, OH, OW), x, channels_last)
    if y.numel() == 0:
        return y
    cfg = depthwise_config(C_out, OH, OW, channels_last)
    geo, (pt, pl) = _geometry(stride, pads, dilation, (KH, KW))
    n_th, n_tw = _tiles(OH, OW, cfg)
    grid = (N * n_th * n_tw, triton.cdiv(C_out, cfg["BLOCK_C"]))
    _launch(_dw.depthwise_fwd_kernel, grid,
            x, weight, bias if bias is not None else weight, y,
            C_out, H, W, OH, OW, n_th, n_tw,
            *x.stride(), *weight.stride()[:1], *weight.stride()[2:], *y.stride(), pt, pl,
            MULT=C_out // C_in, HAS_BIAS=bias is not None, IDX64=_needs_int64(x, y),
            ACC=_acc_dtype(x.dtype), **geo, **cfg)
    return y


def depthwise_bwd_input(grad: torch.Tensor, weight: torch.Tensor, x: torch.Tensor,
                        stride: Sequence[int], pads: Sequence[int], dilation: Sequence[int],
                        channels_last: bool) -> torch.Tensor:
    """dx of the depthwise stage; ``x`` gives the shape (and nothing else is read from it)."""
    N, C_in, H, W = x.shape
    C_out, _, KH, KW = weight.shape
    OH, OW = grad.shape[2:]
    dx = new_output((N, C_in, H, W), x, channels_last, dtype=grad.dtype)
    if dx.numel() == 0:
        return dx
    cfg = depthwise_config(C_in, H, W, channels_last)
    geo, (pt, pl) = _geometry(stride, pads, dilation, (KH, KW))
    n_th, n_tw = _tiles(H, W, cfg)
    grid = (N * n_th * n_tw, triton.cdiv(C_in, cfg["BLOCK_C"]))
    _launch(_dw.depthwise_bwd_input_kernel, grid,
            grad, weight, dx, C_in, H, W, OH, OW, n_th, n_tw,
            *grad.stride(), *weight.stride()[:1], *weight.stride()[2:], *dx.stride(), pt, pl,
            MULT=C_out // C_in, IDX64=_needs_int64(grad, dx), ACC=_acc_dtype(x.dtype),
            **geo, **cfg)
    return dx


def dw_splits(total_tiles: int, c_blocks: int, device: torch.device) -> Tuple[int, int]:
    """Split the dW reduction so that about four waves of programs fill the GPU."""
    if total_tiles == 0:
        return 1, 1
    target = 4 * _num_sms(device) if device.type == "cuda" else 3
    n_splits = max(1, min(total_tiles, triton.cdiv(target, c_blocks)))
    per_split = triton.cdiv(total_tiles, n_splits)
    return triton.cdiv(total_tiles, per_split), per_split


def depthwise_bwd_weight(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                         stride: Sequence[int], pads: Sequence[int], dilation: Sequence[int],
                         need_bias: bool, deterministic: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(dw, db) of the depthwise stage; db is an empty tensor when ``need_bias`` is False."""
    N, C_in, H, W = x.shape
    C_out, _, KH, KW = weight.shape
    OH, OW = grad.shape[2:]
    dw = new_output((C_out, 1, KH, KW), weight, False, dtype=grad.dtype)
    db = new_output((C_out, 1, 1, 1), weight, False, dtype=grad.dtype).view(C_out) if need_bias \
        else grad.new_empty((0,))
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    n_rows = KH * KW + 1
    channels_last = grad.stride(1) == 1 and C_out > 1
    cfg = depthwise_config(C_out, OH, OW, channels_last)
    n_th, n_tw = _tiles(OH, OW, cfg)
    total_tiles = N * n_th * n_tw
    c_blocks = triton.cdiv(C_out, cfg["BLOCK_C"])
    n_splits, per_split = dw_splits(total_tiles, c_blocks, x.device)
    if deterministic:  # one row of partial sums per split, summed in order by the finalize kernel
        part = torch.empty((n_splits, n_rows, C_out), dtype=acc, device=x.device)
    else:  # every split adds into one row with atomics
        part = torch.zeros((1, n_rows, C_out), dtype=acc, device=x.device)
    geo, (pt, pl) = _geometry(stride, pads, dilation, (KH, KW))
    if total_tiles > 0:
        _launch(_dw.depthwise_bwd_weight_kernel, (n_splits, c_blocks),
                x, grad, part, C_out, H, W, OH, OW, n_th, n_tw, total_tiles, per_split,
                *x.stride(), *grad.stride(), pt, pl,
                MULT=C_out // C_in, HAS_BIAS=need_bias, ATOMIC=not deterministic,
                IDX64=_needs_int64(x, grad), ACC=_acc_dtype(x.dtype), **geo, **cfg)
    else:
        part.zero_()
    block_t = _pow2(n_rows)
    block_c = max(1, min(_pow2(C_out), 128, 8192 // block_t))
    _launch(_dw.depthwise_bwd_weight_finalize_kernel, (triton.cdiv(C_out, block_c),),
            part, dw, db if need_bias else dw, C_out, part.shape[0],
            *dw.stride()[:1], *dw.stride()[2:],
            KH=KH, KW=KW, HAS_BIAS=need_bias, ACC=_acc_dtype(x.dtype),
            BLOCK_T=block_t, BLOCK_C=block_c)
    return dw, db
