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
from triton_dsd.kernels import fused as _fused
from triton_dsd.kernels import pointwise as _pw
from triton_dsd.kernels import reduce as _reduce

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


def _patch_interpreter_bf16_dot() -> None:
    """The interpreter keeps bf16 as raw uint16 and its ``tl.dot`` multiplies those integers
    (upstream triton-lang/triton#11584). Widen bf16 operands to fp32 first — exactly what the
    tensor cores do with bf16 products. Applied only when interpreting; GPU code is untouched."""
    try:
        from triton.runtime import interpreter as _interp
    except ImportError:  # pragma: no cover - no interpreter in this Triton
        return
    builder = getattr(_interp, "InterpreterBuilder", None)
    if builder is None or getattr(builder.create_dot, "_triton_dsd_bf16", False):
        return
    original = builder.create_dot

    def create_dot(self, a, b, d, *args, **kwargs):
        if a.dtype.scalar == tl.bfloat16:
            a = self.cast_impl(a, tl.float32)
        if b.dtype.scalar == tl.bfloat16:
            b = self.cast_impl(b, tl.float32)
        return original(self, a, b, d, *args, **kwargs)

    create_dot._triton_dsd_bf16 = True
    builder.create_dot = create_dot


if interpreting():
    _patch_interpreter_bf16_dot()


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


def _contiguous(bias: Optional[torch.Tensor], dummy: torch.Tensor) -> torch.Tensor:
    """A bias as the kernels read it (contiguous), or a dummy pointer when there is none."""
    return dummy if bias is None else bias.contiguous()


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
    (sh, sw), (dh, dw), (kh, kw) = stride, dilation, K
    # the kernels take the top/left padding; the bottom/right one only shapes the output
    return dict(KH=kh, KW=kw, STRIDE_H=sh, STRIDE_W=sw, DIL_H=dh, DIL_W=dw), (pads[0], pads[2])


def out_size(size: int, k: int, s: int, d: int, pad_lo: int, pad_hi: int) -> int:
    return (size + pad_lo + pad_hi - d * (k - 1) - 1) // s + 1


def out_hw(HW: Sequence[int], K: Sequence[int], stride: Sequence[int], pads: Sequence[int],
           dilation: Sequence[int]) -> Tuple[int, int]:
    """Output (OH, OW) of a conv over (H, W); pads = (top, bottom, left, right)."""
    return (out_size(HW[0], K[0], stride[0], dilation[0], pads[0], pads[1]),
            out_size(HW[1], K[1], stride[1], dilation[1], pads[2], pads[3]))


def _layout(channels_last: bool) -> str:
    return "cl" if channels_last else "nchw"


def depthwise_key(C: int, OH: int, OW: int, K, stride, dilation, mult: int,
                  channels_last: bool) -> Dict[str, object]:
    """Problem key of the depthwise kernels (see tuning.py)."""
    from triton_dsd.tuning import bucket
    return dict(layout=_layout(channels_last), K=f"{K[0]}x{K[1]}",
                d=f"{dilation[0]}x{dilation[1]}", s=f"{stride[0]}x{stride[1]}", C=bucket(C),
                m=mult, HW=f"{bucket(OH)}x{bucket(OW)}")


def gemm_key(P: int, M: int, K: int, channels_last: bool) -> Dict[str, object]:
    """Problem key of the pointwise GEMMs: pixels, outputs, reduction channels (bucketed)."""
    from triton_dsd.tuning import bucket
    return dict(layout=_layout(channels_last), C=bucket(K), M=bucket(M),
                P=min(bucket(P), 1 << 20))


def dsd_key(CM: int, M: int, OH: int, OW: int, K, stride, dilation, mult: int,
            channels_last: bool) -> Dict[str, object]:
    key = depthwise_key(CM, OH, OW, K, stride, dilation, mult, channels_last)
    key["M"] = gemm_key(1, M, 1, channels_last)["M"]
    return key


_COMPILE_ERRORS: tuple = ()


def _compile_errors() -> tuple:
    """Exceptions meaning "this config does not build or fit", across Triton versions."""
    global _COMPILE_ERRORS
    if not _COMPILE_ERRORS:
        errs = [ValueError, AssertionError]
        for mod, name in (("triton.compiler.errors", "CompilationError"),
                          ("triton.runtime.errors", "OutOfResources"),
                          ("triton.runtime.errors", "InterpreterError")):
            try:
                errs.append(getattr(__import__(mod, fromlist=[name]), name))
            except (ImportError, AttributeError):
                pass
        _COMPILE_ERRORS = tuple(errs)
    return _COMPILE_ERRORS


def _run_tuned(family: str, fields: Dict[str, object], like: torch.Tensor, default: dict,
               run, cfg: Optional[dict]):
    """run(config) with the config from the store (or ``cfg`` when given explicitly, as the
    tuner does); a stored config that fails to build falls back to the default, with a warning."""
    from triton_dsd import tuning
    if cfg is not None:
        return run(cfg)

    def autotune():
        if _CAPTURE is not None:  # recording launches (chosen_config, inspect): never time
            return None
        space = tuning.config_space(family, fields, like.element_size())
        best = tuning.pick_best(run, tuning.limit(space, 64, default), tuning.timer_for(like.device))
        if best is None:
            return None
        root = os.environ.get("TRITON_DSD_CONFIG_DIR") or tuning.user_dir()
        try:
            tuning.write_entries(root, family, tuning.device_name(like.device),
                                 tuning.dtype_name(like.dtype),
                                 {tuning.make_key(fields): {**best[0], "ms": round(best[1], 5)}})
        except OSError as e:  # a read-only folder: keep the result for this process only
            tuning._warn_once(("ro", root), f"cannot write tuned configs to {root}: {e}")
        return best[0]

    chosen, source = tuning.lookup(family, fields, like.device, like.dtype, lambda: default,
                                   tuner=autotune)
    if source == "default":
        return run(chosen)
    try:
        return run(chosen)
    except _compile_errors() as e:
        tuning.reject(family, fields, like.device, like.dtype, chosen, e, default)
        return run(default)


def depthwise_fwd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  stride: Sequence[int], pads: Sequence[int], dilation: Sequence[int],
                  channels_last: bool, cfg: Optional[dict] = None) -> torch.Tensor:
    """y = depthwise(x); pads = (top, bottom, left, right)."""
    N, C_in, H, W = x.shape
    C_out, _, KH, KW = weight.shape
    OH, OW = out_hw((H, W), (KH, KW), stride, pads, dilation)
    y = new_output((N, C_out, OH, OW), x, channels_last)
    if y.numel() == 0:
        return y
    geo, (pt, pl) = _geometry(stride, pads, dilation, (KH, KW))
    bias = _contiguous(bias, weight)

    def run(c):
        n_th, n_tw = _tiles(OH, OW, c)
        n_cb = triton.cdiv(C_out, c["BLOCK_C"])
        _launch(_dw.depthwise_fwd_kernel, (N * n_th * n_tw * n_cb,),
                x, weight, bias, y, C_out, H, W, OH, OW, n_th, n_tw, n_cb,
                *x.stride(), *weight.stride()[:1], *weight.stride()[2:], *y.stride(), pt, pl,
                MULT=C_out // C_in, HAS_BIAS=bias is not weight, IDX64=_needs_int64(x, y),
                ACC=_acc_dtype(x.dtype), **geo, **c)
        return y

    fields = depthwise_key(C_out, OH, OW, (KH, KW), stride, dilation, C_out // C_in, channels_last)
    return _run_tuned("depthwise_fwd", fields, x, depthwise_config(C_out, OH, OW, channels_last),
                      run, cfg)


def depthwise_bwd_input(grad: torch.Tensor, weight: torch.Tensor, x: torch.Tensor,
                        stride: Sequence[int], pads: Sequence[int], dilation: Sequence[int],
                        channels_last: bool, cfg: Optional[dict] = None) -> torch.Tensor:
    """dx of the depthwise stage; ``x`` gives the shape (and nothing else is read from it)."""
    N, C_in, H, W = x.shape
    C_out, _, KH, KW = weight.shape
    OH, OW = grad.shape[2:]
    dx = new_output((N, C_in, H, W), x, channels_last, dtype=grad.dtype)
    if dx.numel() == 0:
        return dx
    geo, (pt, pl) = _geometry(stride, pads, dilation, (KH, KW))

    def run(c):
        n_th, n_tw = _tiles(H, W, c)
        n_cb = triton.cdiv(C_in, c["BLOCK_C"])
        _launch(_dw.depthwise_bwd_input_kernel, (N * n_th * n_tw * n_cb,),
                grad, weight, dx, C_in, H, W, OH, OW, n_th, n_tw, n_cb,
                *grad.stride(), *weight.stride()[:1], *weight.stride()[2:], *dx.stride(), pt, pl,
                MULT=C_out // C_in, IDX64=_needs_int64(grad, dx), ACC=_acc_dtype(x.dtype),
                **geo, **c)
        return dx

    fields = depthwise_key(C_in, H, W, (KH, KW), stride, dilation, C_out // C_in, channels_last)
    return _run_tuned("depthwise_bwd_input", fields, grad,
                      depthwise_config(C_in, H, W, channels_last), run, cfg)


def splitk_finish(part: torch.Tensor, out: torch.Tensor) -> None:
    """out[r, c] = sum_s part[s, r, c] in a fixed order, cast to out's dtype (any strides)."""
    S, R, C = part.shape
    block_r = min(_pow2(R), 64)
    block_c = min(_pow2(C), 128)
    n_cb = triton.cdiv(C, block_c)
    _launch(_reduce.splitk_reduce_kernel, (triton.cdiv(R, block_r) * n_cb,),
            part, out, S, R, C, n_cb, *part.stride(), *out.stride(),
            ACC=_acc_dtype(part.dtype), BLOCK_R=block_r, BLOCK_C=block_c)


def dw_splits(total_tiles: int, c_blocks: int, device: torch.device) -> Tuple[int, int]:
    """Split a reduction so that about four waves of programs fill the GPU."""
    if total_tiles == 0:
        return 1, 1
    target = 4 * _num_sms(device) if device.type == "cuda" else 3
    n_splits = max(1, min(total_tiles, triton.cdiv(target, c_blocks), 65535))
    per_split = triton.cdiv(total_tiles, n_splits)
    return triton.cdiv(total_tiles, per_split), per_split


def depthwise_bwd_weight(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                         stride: Sequence[int], pads: Sequence[int], dilation: Sequence[int],
                         need_bias: bool, deterministic: bool,
                         cfg: Optional[dict] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(dw, db) of the depthwise stage; db is an empty tensor when ``need_bias`` is False."""
    N, C_in, H, W = x.shape
    C_out, _, KH, KW = weight.shape
    OH, OW = grad.shape[2:]
    dw = new_output((C_out, 1, KH, KW), weight, False, dtype=grad.dtype)
    db = new_output((C_out, 1, 1, 1), weight, False, dtype=grad.dtype).view(C_out) if need_bias \
        else grad.new_empty((0,))
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    n_rows, T = KH * KW + 1, KH * KW
    channels_last = grad.stride(1) == 1 and C_out > 1
    geo, (pt, pl) = _geometry(stride, pads, dilation, (KH, KW))

    def run(c):
        n_th, n_tw = _tiles(OH, OW, c)
        total_tiles = N * n_th * n_tw
        c_blocks = triton.cdiv(C_out, c["BLOCK_C"])
        n_splits, per_split = dw_splits(total_tiles, c_blocks, x.device)
        if deterministic:  # a row of partial sums per split, summed in order below
            part = torch.empty((n_splits, n_rows, C_out), dtype=acc, device=x.device)
        else:  # every split adds into one row with atomics
            part = torch.zeros((1, n_rows, C_out), dtype=acc, device=x.device)
        if total_tiles > 0:
            _launch(_dw.depthwise_bwd_weight_kernel, (c_blocks, n_splits),
                    x, grad, part, C_out, H, W, OH, OW, n_th, n_tw, total_tiles, per_split,
                    *x.stride(), *grad.stride(), pt, pl,
                    MULT=C_out // C_in, HAS_BIAS=need_bias, ATOMIC=not deterministic,
                    IDX64=_needs_int64(x, grad), ACC=_acc_dtype(x.dtype), **geo, **c)
        else:
            part.zero_()
        splitk_finish(part[:, :T, :], dw.view(C_out, T).t())
        if need_bias:
            splitk_finish(part[:, T:, :], db.view(1, C_out))
        return dw, db

    fields = depthwise_key(C_out, OH, OW, (KH, KW), stride, dilation, C_out // C_in, channels_last)
    return _run_tuned("depthwise_bwd_weight", fields, grad,
                      depthwise_config(C_out, OH, OW, channels_last), run, cfg)


# --------------------------------------------------------------------------- pointwise / fused
def allow_tf32(dtype: torch.dtype) -> bool:
    """fp32 GEMMs use TF32 exactly when eager convolutions do (cuDNN's flag, default True)."""
    return dtype == torch.float32 and bool(torch.backends.cudnn.allow_tf32)


def _pixel_addressing(t: torch.Tensor) -> Tuple[int, int, int, bool]:
    """(W, stride_h, stride_w, PIX_2D) for a 4D map: PIX_2D is False when the (H, W) axes
    flatten into one pixel axis of stride ``stride_w`` (NCHW, channels_last, 1D views)."""
    _, _, H, W = t.shape
    sh, sw = t.stride(2), t.stride(3)
    if H == 1:
        return W, sh, sw, False
    if W == 1:
        return W, sh, sh, False
    return W, sh, sw, sh != W * sw


def _fold_batch(P: int, *maps: Tuple[torch.Tensor, int]) -> bool:
    """True if every (map, pixel stride) continues its pixel axis across the batch (channels_last
    contiguous maps): the GEMM then runs over N*P pixels as one image."""
    return all(t.shape[0] == 1 or t.stride(0) == P * ps for t, ps in maps)


#: shared memory the default GEMM configs may use for their pipeline stages (fits sm_80 and
#: sm_90 with room for two blocks per SM)
_SMEM_BUDGET = 100 * 1024


def pointwise_config(P: int, M: int, K: int, elem_bytes: int = 2) -> Dict[str, int]:
    interp = interpreting()
    block_p = min(max(_pow2(P), 16), 256 if interp else 128)
    block_m = min(max(_pow2(M), 16), 128)
    block_k = min(max(_pow2(K), 16), 128 if interp else 64)
    stages = 3
    while not interp and block_k > 16 and \
            stages * (block_p + block_m) * block_k * elem_bytes > _SMEM_BUDGET:
        block_k //= 2
    warps = 8 if block_p * block_m >= 128 * 128 else 4
    return dict(BLOCK_P=block_p, BLOCK_M=block_m, BLOCK_K=block_k, num_warps=warps,
                num_stages=stages)


def pointwise_bwd_weight_config(P: int, M: int, K: int) -> Dict[str, int]:
    interp = interpreting()
    return dict(BLOCK_P=min(max(_pow2(P), 16), 256 if interp else 64),
                BLOCK_M=min(max(_pow2(M), 16), 128 if interp else 64),
                BLOCK_K=min(max(_pow2(K), 16), 128 if interp else 64), num_warps=4, num_stages=3)


def _gemm(x: torch.Tensor, w_mk: Tuple[int, int, int, int], w: torch.Tensor,
          bias: Optional[torch.Tensor], out_channels_last: bool,
          cfg: Optional[dict]) -> torch.Tensor:
    """y[n, m, p] = sum_k x[n, k, p] * w[m, k] (+ b[m]); w_mk = (M, K, stride_m, stride_k) of w."""
    N, K, H, W = x.shape
    M, _, swm, swk = w_mk
    P = H * W
    y = new_output((N, M, H, W), x, out_channels_last)
    if y.numel() == 0:
        return y
    w_pix, sxh, sxw, pix2d = _pixel_addressing(x)
    syp = y.stride(3) if W > 1 else y.stride(2)
    n_eff, p_eff = N, P
    if not pix2d and _fold_batch(P, (x, sxw), (y, syp)):
        n_eff, p_eff = 1, N * P
    bias = _contiguous(bias, w)

    def run(c):
        n_pb, n_mb = triton.cdiv(p_eff, c["BLOCK_P"]), triton.cdiv(M, c["BLOCK_M"])
        _launch(_pw.pointwise_fwd_kernel, (n_eff * n_pb * n_mb,),
                x, w, bias, y, K, M, p_eff, w_pix, n_pb, n_mb,
                x.stride(0), x.stride(1), sxh, sxw, swm, swk, y.stride(0), y.stride(1), syp,
                HAS_BIAS=bias is not w, PIX_2D=pix2d, ALLOW_TF32=allow_tf32(x.dtype),
                IDX64=_needs_int64(x, y), ACC=_acc_dtype(x.dtype), **c)
        return y

    return _run_tuned("pointwise_fwd", gemm_key(p_eff, M, K, is_channels_last_2d(x)), x,
                      pointwise_config(p_eff, M, K, x.element_size()), run, cfg)


def pointwise_fwd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  channels_last: bool, cfg: Optional[dict] = None) -> torch.Tensor:
    """y = 1x1 conv of x (N, K, H, W) with weight (M, K, 1, 1)."""
    M, K = weight.shape[:2]
    return _gemm(x, (M, K, weight.stride(0), weight.stride(1)), weight, bias, channels_last, cfg)


def pointwise_bwd_input(grad: torch.Tensor, weight: torch.Tensor, channels_last: bool,
                        cfg: Optional[dict] = None) -> torch.Tensor:
    """dx[n, k, p] = sum_m dy[n, m, p] * W[m, k]: the forward GEMM with W transposed."""
    M, K = weight.shape[:2]
    return _gemm(grad, (K, M, weight.stride(1), weight.stride(0)), weight, None, channels_last, cfg)


def pointwise_bwd_weight(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                         need_bias: bool, deterministic: bool,
                         cfg: Optional[dict] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(dW (M, K, 1, 1), db (M,)) of a 1x1 conv; db is empty unless ``need_bias``."""
    N, K, H, W = x.shape
    M = grad.shape[1]
    P = H * W
    dw = new_output((M, K, 1, 1), weight, False, dtype=grad.dtype)
    db = new_output((M, 1, 1, 1), weight, False, dtype=grad.dtype).view(M) if need_bias \
        else grad.new_empty((0,))
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    if not (grad.shape[3] == 1 or grad.stride(2) == grad.shape[3] * grad.stride(3)):
        grad = grad.contiguous()  # rare (an expanded/strided gradient): give it a pixel axis
    w_pix, sxh, sxw, pix2d = _pixel_addressing(x)
    sdp = grad.stride(3) if W > 1 else grad.stride(2)
    n_eff, p_eff = N, P
    if not pix2d and _fold_batch(P, (x, sxw), (grad, sdp)):
        n_eff, p_eff = 1, N * P

    def run(c):
        n_pb = triton.cdiv(p_eff, c["BLOCK_P"])
        n_mb, n_kb = triton.cdiv(M, c["BLOCK_M"]), triton.cdiv(K, c["BLOCK_K"])
        total = n_eff * n_pb
        n_splits, per_split = dw_splits(total, n_mb * n_kb, x.device)
        rows = n_splits if deterministic else 1
        alloc = torch.empty if deterministic else torch.zeros
        part_w = alloc((rows, M, K), dtype=acc, device=x.device)
        part_b = alloc((rows, M), dtype=acc, device=x.device)
        if total > 0 and M > 0 and K > 0:
            _launch(_pw.pointwise_bwd_weight_kernel, (n_mb * n_kb, n_splits),
                    x, grad, part_w, part_b, K, M, p_eff, w_pix, n_pb, total, per_split, n_kb,
                    x.stride(0), x.stride(1), sxh, sxw, grad.stride(0), grad.stride(1), sdp,
                    HAS_BIAS=need_bias, ATOMIC=not deterministic, PIX_2D=pix2d,
                    ALLOW_TF32=allow_tf32(x.dtype), IDX64=_needs_int64(x, grad),
                    ACC=_acc_dtype(x.dtype), **c)
        else:
            part_w.zero_()
            part_b.zero_()
        splitk_finish(part_w, dw.view(M, K))
        if need_bias:
            splitk_finish(part_b.unsqueeze(2), db.view(M, 1))
        return dw, db

    return _run_tuned("pointwise_bwd_weight", gemm_key(p_eff, M, K, is_channels_last_2d(x)), x,
                      pointwise_bwd_weight_config(p_eff, M, K), run, cfg)


def fused_config(P: int, M: int, CM: int) -> Dict[str, int]:
    interp = interpreting()
    block_p = min(max(_pow2(P), 16), 256 if interp else 64)
    block_m = min(max(_pow2(M), 16), 128)
    block_k = min(max(_pow2(CM), 16), 64 if interp else 32)
    warps = 8 if block_m >= 128 else 4
    return dict(BLOCK_P=block_p, BLOCK_M=block_m, BLOCK_K=block_k, num_warps=warps, num_stages=2)


def dsd_fwd(x: torch.Tensor, dw_weight: torch.Tensor, dw_bias: Optional[torch.Tensor],
            pw_weight: torch.Tensor, pw_bias: Optional[torch.Tensor], stride: Sequence[int],
            pads: Sequence[int], dilation: Sequence[int], channels_last: bool,
            cfg: Optional[dict] = None) -> torch.Tensor:
    """y = pointwise(depthwise(x)) in ONE launch; the depthwise output stays on chip."""
    N, C, H, W = x.shape
    CM, _, KH, KW = dw_weight.shape
    M = pw_weight.shape[0]
    OH, OW = out_hw((H, W), (KH, KW), stride, pads, dilation)
    y = new_output((N, M, OH, OW), x, channels_last)
    if y.numel() == 0:
        return y
    geo, (pt, pl) = _geometry(stride, pads, dilation, (KH, KW))
    syp = y.stride(3) if OW > 1 else y.stride(2)
    dw_bias, pw_bias = _contiguous(dw_bias, dw_weight), _contiguous(pw_bias, pw_weight)

    def run(c):
        n_pb, n_mb = triton.cdiv(OH * OW, c["BLOCK_P"]), triton.cdiv(M, c["BLOCK_M"])
        _launch(_fused.dsd_fwd_kernel, (N * n_pb * n_mb,),
                x, dw_weight, dw_bias, pw_weight, pw_bias, y,
                CM, M, H, W, OH, OW, n_pb, n_mb,
                *x.stride(), *dw_weight.stride()[:1], *dw_weight.stride()[2:],
                pw_weight.stride(0), pw_weight.stride(1), y.stride(0), y.stride(1), syp, pt, pl,
                MULT=CM // C, HAS_DW_BIAS=dw_bias is not dw_weight,
                HAS_PW_BIAS=pw_bias is not pw_weight, ALLOW_TF32=allow_tf32(x.dtype),
                IDX64=_needs_int64(x, y), ACC=_acc_dtype(x.dtype), **geo, **c)
        return y

    fields = dsd_key(CM, M, OH, OW, (KH, KW), stride, dilation, CM // C, channels_last)
    return _run_tuned("dsd_fwd", fields, x, fused_config(OH * OW, M, CM), run, cfg)
