"""Launchers: grids, strides, output allocation, one per kernel family. Never the math.

Every launcher takes 4D tensors (N, C, H, W); 1D problems arrive as (N, C, 1, L) views.
``pads`` is always (top, bottom, left, right). The config comes from :func:`dispatch.run`
(or ``cfg``, when the tuner passes one); launches go through :func:`_runtime.launch`.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from triton_dsd import _runtime, configs, dispatch, registry, shapes
from triton_dsd.epilogue import Epilogue
from triton_dsd.kernels._common import MAX_UNROLL, NORM_LAYER, NORM_NONE, ROW_LOOP_TAPS

_INT32_MAX = 2**31 - 1
_F = registry.FAMILIES


def _contiguous(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """An optional vector (a bias) as the kernels read it: contiguous, or None."""
    return None if t is None else t.contiguous()


def needs_int64(*tensors: torch.Tensor) -> bool:
    """True if an element offset of any tensor can pass int32 (computed from sizes and strides)."""
    for t in tensors:
        span = sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()) if s > 0)
        if span + 1 > _INT32_MAX or t.numel() > _INT32_MAX:
            return True
    return False


def acc_dtype(dtype: torch.dtype):
    """The kernels' accumulator: fp64 for fp64 tensors, fp32 otherwise."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _geometry(stride, pads, dilation, K):
    (sh, sw), (dh, dw), (kh, kw) = stride, dilation, K
    # the kernels take the top/left padding; the bottom/right one only shapes the output
    return dict(KH=kh, KW=kw, STRIDE_H=sh, STRIDE_W=sw, DIL_H=dh, DIL_W=dw), (pads[0], pads[2])


# --------------------------------------------------------------------------- depthwise
#: pack the depthwise weight as [KH*KW, C_out] (contiguous along channels: one vector load per
#: tap) with a copy per call. Off: the model (``triton-dsd model``) shows the saving is ~2
#: instructions per output at K3 (the weight load is shared by every pixel a thread holds)
#: while the copy is an extra launch per call; caching a pack by the tensor's version would
#: serve stale weights after ``w.data.copy_()`` or a CUDA-graph replay, which do not bump it.
PACK_DW_WEIGHTS = False


def _window(cfg: dict, width: int, multiple: int = 1) -> dict:
    """The config with its BLOCK_W (outputs per segment, an unroll count) balanced over the
    row: the fewest segments of at most BLOCK_W (rounded up to a multiple of ``multiple``), all
    of about the same length (56 columns at BLOCK_W 32: two segments of 28, not 32 + 24)."""
    n_seg = triton.cdiv(width, cfg["BLOCK_W"])
    bw = triton.cdiv(triton.cdiv(width, n_seg), multiple) * multiple
    return dict(cfg, BLOCK_W=max(bw, multiple))


def _window_options(KH: int, KW: int) -> dict:
    """Launch options of the window kernels: past MAX_UNROLL taps (the kernel-row loop) ptxas
    caps some at 128 or 168 registers and spills a few bytes; allowing 255 keeps them whole."""
    return dict(maxnreg=255) if KH * KW > MAX_UNROLL else {}


def _taps(weight: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
    """(w, stride per tap, stride per channel) of a (C_out, 1, KH, KW) depthwise weight, whose
    tap t = kh*KW + kw is at t*stride_tap + c*stride_channel."""
    C_out, _, KH, KW = weight.shape
    if PACK_DW_WEIGHTS:
        packed = weight.reshape(C_out, KH * KW).t().contiguous()
        return packed, packed.stride(0), packed.stride(1)
    if KH > 1 and KW > 1 and weight.stride(2) != KW * weight.stride(3):
        weight = weight.contiguous()  # taps that do not flatten into one stride
    tap = weight.stride(3) if KW > 1 else weight.stride(2)
    return weight, tap, weight.stride(0)


def depthwise_fwd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  stride: Sequence[int], pads: Sequence[int], dilation: Sequence[int],
                  channels_last: bool, cfg: Optional[dict] = None) -> torch.Tensor:
    """y = depthwise(x)."""
    N, C_in, H, W = x.shape
    C_out, _, KH, KW = weight.shape
    OH, OW = shapes.out_sizes((H, W), (KH, KW), stride, pads, dilation)
    y = _runtime.new_output((N, C_out, OH, OW), x, channels_last)
    if y.numel() == 0:
        return y
    geo, (pt, pl) = _geometry(stride, pads, dilation, (KH, KW))
    bias = _contiguous(bias)
    fam = _F["depthwise_fwd"]

    w, stride_wt, stride_wc = _taps(weight)

    def run(c):
        c = _window(c, OW)
        n_rows = N * OH * triton.cdiv(OW, c["BLOCK_W"])
        n_cb = triton.cdiv(C_out, c["BLOCK_C"])
        _runtime.launch(
            fam.kernel, (triton.cdiv(n_rows, c["BLOCK_R"]) * n_cb,),
            x, w, bias, y, C_out, H, W, OH, OW, n_rows, N * OH, n_cb,
            *x.stride(), stride_wt, stride_wc, *y.stride(), pt, pl,
            MULT=C_out // C_in, HAS_BIAS=bias is not None, EVEN_C=C_out % c["BLOCK_C"] == 0,
            EVEN_W=OW % c["BLOCK_W"] == 0, IDX64=needs_int64(x, y), ACC=acc_dtype(x.dtype),
            **geo, **c, **_window_options(KH, KW))
        return y

    fields = fam.key(C_out, OH, OW, (KH, KW), stride, dilation, C_out // C_in, channels_last)
    return dispatch.run(fam.name, fields, x, run, cfg)


def depthwise_bwd_input(grad: torch.Tensor, weight: torch.Tensor, x: torch.Tensor,
                        stride: Sequence[int], pads: Sequence[int], dilation: Sequence[int],
                        channels_last: bool, cfg: Optional[dict] = None) -> torch.Tensor:
    """dx of the depthwise stage; ``x`` gives the shape (and nothing else is read from it)."""
    N, C_in, H, W = x.shape
    C_out, _, KH, KW = weight.shape
    OH, OW = grad.shape[2:]
    dx = _runtime.new_output((N, C_in, H, W), x, channels_last, dtype=grad.dtype)
    if dx.numel() == 0:
        return dx
    geo, (pt, pl) = _geometry(stride, pads, dilation, (KH, KW))
    fam = _F["depthwise_bwd_input"]
    w, stride_wt, stride_wc = _taps(weight)
    sw = stride[1]

    def run(c):
        # segments start at multiples of the stride, so which taps of a column divide evenly
        # is known when the kernel compiles
        c = _window(c, W, sw)
        n_rows = N * H * triton.cdiv(W, c["BLOCK_W"])
        n_cb = triton.cdiv(C_in, c["BLOCK_C"])
        _runtime.launch(
            fam.kernel, (triton.cdiv(n_rows, c["BLOCK_R"]) * n_cb,),
            grad, w, dx, C_in, H, W, OH, OW, n_rows, N * H, n_cb,
            *grad.stride(), stride_wt, stride_wc, *dx.stride(), pt, pl,
            MULT=C_out // C_in, EVEN_C=C_in % c["BLOCK_C"] == 0, EVEN_W=W % c["BLOCK_W"] == 0,
            PHASE_W=pl % sw,
            IDX64=needs_int64(grad, dx), ACC=acc_dtype(x.dtype), **geo, **c,
            **_window_options(KH, KW))
        return dx

    fields = fam.key(C_in, H, W, (KH, KW), stride, dilation, C_out // C_in, channels_last)
    return dispatch.run(fam.name, fields, grad, run, cfg)


def splitk_finish(part: torch.Tensor, out: torch.Tensor) -> None:
    """out[r, c] = sum_s part[s, r, c] in a fixed order, cast to out's dtype (any strides)."""
    S, R, C = part.shape
    block_r = min(_pow2(R), 64)
    block_c = min(_pow2(C), 128)
    n_cb = triton.cdiv(C, block_c)
    _runtime.launch(
        registry.FINISH_KERNEL, (triton.cdiv(R, block_r) * n_cb,),
        part, out, S, R, C, n_cb, *part.stride(), *out.stride(),
        ACC=acc_dtype(part.dtype), BLOCK_R=block_r, BLOCK_C=block_c)


def reduction_splits(total_tiles: int, c_blocks: int, device: torch.device) -> Tuple[int, int]:
    """(n_splits, tiles per split) of a split reduction: about four waves of programs on the
    GPU, or on the GPU an offline tool models (capture); a few splits under the interpreter;
    at most 65535 splits (grid axis 1)."""
    if total_tiles == 0:
        return 1, 1
    gpu = device.type == "cuda" or _runtime.capturing()
    target = 4 * _runtime.num_sms(device) if gpu else 3
    n_splits = max(1, min(total_tiles, triton.cdiv(target, c_blocks), 65535))
    per_split = triton.cdiv(total_tiles, n_splits)
    return triton.cdiv(total_tiles, per_split), per_split


#: tiles a weight-gradient split sums at least: its epilogue (the reduction over W across the
#: program's threads and the partial-sum store) costs about five tiles' instructions
WGRAD_MIN_TILES = 16


def wgrad_tap_groups(KH: int, KW: int, block_t: int) -> int:
    """Tap groups of the weight-gradient kernel (its grid axis 2): one if BLOCK_T covers every
    tap; else groups of whole kernel rows (rows padded to a power of two), or segments of one
    row when a padded row is wider than BLOCK_T."""
    if block_t >= KH * KW:
        return 1
    if block_t >= _pow2(KW):
        return triton.cdiv(KH, block_t // _pow2(KW))
    return KH * triton.cdiv(KW, block_t)


def depthwise_bwd_weight(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                         stride: Sequence[int], pads: Sequence[int], dilation: Sequence[int],
                         need_bias: bool, deterministic: bool,
                         cfg: Optional[dict] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(dw, db) of the depthwise stage; db is an empty tensor when ``need_bias`` is False."""
    N, C_in, H, W = x.shape
    C_out, _, KH, KW = weight.shape
    OH, OW = grad.shape[2:]
    dw = _runtime.new_output((C_out, 1, KH, KW), weight, False, dtype=grad.dtype)
    db = (_runtime.new_output((C_out, 1, 1, 1), weight, False, dtype=grad.dtype).view(C_out)
          if need_bias else grad.new_empty((0,)))
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    n_rows, T = KH * KW + 1, KH * KW
    channels_last = shapes.is_channels_last_2d(grad)
    geo, (pt, pl) = _geometry(stride, pads, dilation, (KH, KW))
    fam = _F["depthwise_bwd_weight"]

    def run(c):
        # a tile is BLOCK_W columns of one of the N*OH output rows; a program sums a split of
        # consecutive tiles for BLOCK_C channels and one group of BLOCK_T taps
        n_tw = triton.cdiv(OW, c["BLOCK_W"])
        total_tiles = N * OH * n_tw
        c_blocks = triton.cdiv(C_out, c["BLOCK_C"])
        n_groups = wgrad_tap_groups(KH, KW, c["BLOCK_T"])
        n_splits, per_split = reduction_splits(total_tiles, c_blocks * n_groups, x.device)
        # fewer, longer splits: each ends with a reduction over W worth about five tiles
        if per_split < min(WGRAD_MIN_TILES, total_tiles):
            per_split = min(WGRAD_MIN_TILES, total_tiles)
            n_splits = triton.cdiv(total_tiles, per_split)
        if deterministic:  # a row block of partial sums per split, summed in order below
            part = torch.empty((n_splits, n_rows, C_out), dtype=acc, device=x.device)
        else:  # every split adds into one row block with atomics
            part = torch.zeros((1, n_rows, C_out), dtype=acc, device=x.device)
        if total_tiles > 0:
            _runtime.launch(
                fam.kernel, (c_blocks, n_splits, n_groups),
                x, grad, part, C_out, H, W, OH, OW, n_tw, total_tiles, per_split,
                *x.stride(), *grad.stride(), pt, pl,
                MULT=C_out // C_in, HAS_BIAS=need_bias, ATOMIC=not deterministic,
                IDX64=needs_int64(x, grad), ACC=acc_dtype(x.dtype), **geo, **c)
        else:
            part.zero_()
        splitk_finish(part[:, :T, :], dw.view(C_out, T).t())
        if need_bias:
            splitk_finish(part[:, T:, :], db.view(1, C_out))
        return dw, db

    fields = fam.key(C_out, OH, OW, (KH, KW), stride, dilation, C_out // C_in, channels_last)
    return dispatch.run(fam.name, fields, grad, run, cfg)


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


def _gemm(x: torch.Tensor, w_mk: Tuple[int, int, int, int], w: torch.Tensor,
          bias: Optional[torch.Tensor], out_channels_last: bool,
          cfg: Optional[dict]) -> torch.Tensor:
    """y[n, m, p] = sum_k x[n, k, p] * w[m, k] (+ b[m]); w_mk = (M, K, stride_m, stride_k) of w."""
    N, K, H, W = x.shape
    M, _, swm, swk = w_mk
    P = H * W
    y = _runtime.new_output((N, M, H, W), x, out_channels_last)
    if y.numel() == 0:
        return y
    w_pix, sxh, sxw, pix2d = _pixel_addressing(x)
    syp = y.stride(3) if W > 1 else y.stride(2)
    n_eff, p_eff = N, P
    if not pix2d and _fold_batch(P, (x, sxw), (y, syp)):
        n_eff, p_eff = 1, N * P
    bias = _contiguous(bias)
    fam = _F["pointwise_fwd"]

    def run(c):
        n_pb, n_mb = triton.cdiv(p_eff, c["BLOCK_P"]), triton.cdiv(M, c["BLOCK_M"])
        _runtime.launch(
            fam.kernel, (n_eff * n_pb * n_mb,),
            x, w, bias, y, K, M, p_eff, w_pix, n_pb, n_mb,
            x.stride(0), x.stride(1), sxh, sxw, swm, swk, y.stride(0), y.stride(1), syp,
            HAS_BIAS=bias is not None, PIX_2D=pix2d, ALLOW_TF32=allow_tf32(x.dtype),
            IDX64=needs_int64(x, y), ACC=acc_dtype(x.dtype), **c)
        return y

    fields = fam.key(p_eff, M, K, shapes.is_channels_last_2d(x))
    return dispatch.run(fam.name, fields, x, run, cfg)


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
    dw = _runtime.new_output((M, K, 1, 1), weight, False, dtype=grad.dtype)
    db = (_runtime.new_output((M, 1, 1, 1), weight, False, dtype=grad.dtype).view(M)
          if need_bias else grad.new_empty((0,)))
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    if not (grad.shape[3] == 1 or grad.stride(2) == grad.shape[3] * grad.stride(3)):
        grad = grad.contiguous()  # rare (an expanded/strided gradient): give it a pixel axis
    w_pix, sxh, sxw, pix2d = _pixel_addressing(x)
    sdp = grad.stride(3) if W > 1 else grad.stride(2)
    n_eff, p_eff = N, P
    if not pix2d and _fold_batch(P, (x, sxw), (grad, sdp)):
        n_eff, p_eff = 1, N * P
    fam = _F["pointwise_bwd_weight"]

    def run(c):
        n_pb = triton.cdiv(p_eff, c["BLOCK_P"])
        n_mb, n_kb = triton.cdiv(M, c["BLOCK_M"]), triton.cdiv(K, c["BLOCK_K"])
        total = n_eff * n_pb
        n_splits, per_split = reduction_splits(total, n_mb * n_kb, x.device)
        rows = n_splits if deterministic else 1
        alloc = torch.empty if deterministic else torch.zeros
        part_w = alloc((rows, M, K), dtype=acc, device=x.device)
        part_b = alloc((rows, M), dtype=acc, device=x.device) if need_bias else None
        if total > 0 and M > 0 and K > 0:
            _runtime.launch(
                fam.kernel, (n_mb * n_kb, n_splits),
                x, grad, part_w, part_b, K, M, p_eff, w_pix, n_pb, total, per_split, n_kb,
                x.stride(0), x.stride(1), sxh, sxw, grad.stride(0), grad.stride(1), sdp,
                HAS_BIAS=need_bias, ATOMIC=not deterministic, PIX_2D=pix2d,
                ALLOW_TF32=allow_tf32(x.dtype), IDX64=needs_int64(x, grad),
                ACC=acc_dtype(x.dtype), **c)
        else:
            part_w.zero_()
            if need_bias:
                part_b.zero_()
        splitk_finish(part_w, dw.view(M, K))
        if need_bias:
            splitk_finish(part_b.unsqueeze(2), db.view(M, 1))
        return dw, db

    fields = fam.key(p_eff, M, K, shapes.is_channels_last_2d(x))
    return dispatch.run(fam.name, fields, x, run, cfg)


def dsd_z_stationary(CM: int, cfg: dict) -> bool:
    """True if a dsd_fwd config holds every depthwise channel in one z tile (BLOCK_K >= C*m):
    each program then computes its z once and loops over all M (grid N * n_p_blocks)."""
    return cfg["BLOCK_K"] >= CM


#: the z-stationary fused forward unrolls a kernel row's KW taps (their loads in flight
#: together) while KW x the z elements a thread holds stays within this; past it (k5 and up
#: on a 64-element tile) the unrolled row spills, so one tap per iteration
DSD_ROW_UNROLL_ELEMS = 192


def dsd_tap_options(x: torch.Tensor, CM: int, KW: int, cfg: dict) -> Tuple[bool, bool]:
    """(UNROLL_KW, PIX_MAJOR) of a dsd_fwd launch. The recompute path keeps its row loop over
    [pixel, channel] tiles. The z-stationary path builds its tile [channel, pixel] when x's
    pixels are closer in memory than its channels (NCHW, NCL: lanes along pixels, coalesced),
    and unrolls a row of taps only for 16-byte channel loads while KW x (z elements a thread)
    <= DSD_ROW_UNROLL_ELEMS (pixel-major loads are scalar, an address each: one tap at a
    time). The kernel also takes one tap at a time with 64-bit offsets (IDX64). The
    recompute path unrolls a row of at most MAX_UNROLL taps while KW x (z chunk elements a
    thread) stays within DSD_ROW_UNROLL_ELEMS: past that (the speech models' K17..87 rows) an
    unrolled row spills, and its loads, pipelined into shared memory, pass its size (1D K33
    fp32: 255 registers, 432 B of spills, 340 KB of shared memory on sm_90; one tap at a time:
    165 registers, no spill, 64 KB). At K7 the unrolled row models 1.75x faster."""
    if not dsd_z_stationary(CM, cfg):
        per_thread = cfg["BLOCK_P"] * cfg["BLOCK_K"] // (32 * cfg["num_warps"])
        return KW <= MAX_UNROLL and KW * per_thread <= DSD_ROW_UNROLL_ELEMS, False
    pix_stride = x.stride(3) if x.shape[3] > 1 else x.stride(2)
    pix_major = x.shape[1] > 1 and abs(pix_stride) < abs(x.stride(1))
    per_thread = cfg["BLOCK_P"] * cfg["BLOCK_K"] // (32 * cfg["num_warps"])
    return not pix_major and KW * per_thread <= DSD_ROW_UNROLL_ELEMS, pix_major


#: register windows of the z-stationary channels_last fused forward (``kernels/fused.py``,
#: WIN): outputs a segment, the widest first. A window of WIN outputs loads and converts
#: WIN + (KW-1)*DIL_W source columns a kernel row instead of WIN*KW
DSD_WINDOWS = (4, 2)
#: a window position's product z_j @ wp has BLOCK_P / WIN rows: tl.dot takes at least 16
DSD_WINDOW_MIN_ROWS = 16
#: ... and each z_j holds at least this many ACC words a thread (one 16-byte vector of 16-bit
#: channels): below it a segment's tile is thinner than the program's threads and lanes repeat
DSD_WINDOW_MIN_WORDS = 8
#: kernel rows of at most this many taps: a row's weights (a vector of a thread's channels a
#: tap, up to depthwise.TAP_GROUP at once) beside the windows spill past it (compile sweep:
#: 1D k7 on [32 x 256], 2D k9 on [64 x 128], sm_90)
DSD_WINDOW_MAX_KW = 5


def dsd_window(x: torch.Tensor, CM: int, KW: int, cfg: dict, idx64: bool,
               dil_w: int = 1, stride_w: int = 1) -> int:
    """WIN of a dsd_fwd launch: on the z-stationary path for channel-contiguous x (not
    PIX_MAJOR) without 64-bit offsets, with KW <= DSD_WINDOW_MAX_KW, or a 16-bit row of more
    than ROW_LOOP_TAPS taps at dilation 1 and stride 1 (the windows loop over its tap groups:
    one group's columns in flight; K33..87 C*m 128..512 spill-free on sm_80/sm_90, Triton 3.6
    and 3.9, where dilation 2 and 4, stride 2 or fp32 spill), and an fp32 accumulator
    (fp64 words take two registers: a 5-tap row spills on [32 x 128]), the widest of
    DSD_WINDOWS whose z_j [BLOCK_P / WIN, BLOCK_K] keeps DSD_WINDOW_MIN_ROWS rows and
    DSD_WINDOW_MIN_WORDS words a thread; else 1 (tap by tap)."""
    wide = (KW > ROW_LOOP_TAPS.value and dil_w == 1 and stride_w == 1
            and x.element_size() == 2)
    if (not dsd_z_stationary(CM, cfg) or idx64 or (KW > DSD_WINDOW_MAX_KW and not wide)
            or x.dtype == torch.float64 or dsd_tap_options(x, CM, KW, cfg)[1]):
        return 1
    threads = 32 * cfg["num_warps"]
    for win in DSD_WINDOWS:
        rows = cfg["BLOCK_P"] // win
        words = rows * cfg["BLOCK_K"] // threads
        if rows >= DSD_WINDOW_MIN_ROWS and words >= DSD_WINDOW_MIN_WORDS:
            return win
    return 1


def dsd_recompute_factor(CM: int, M: int, cfg: dict) -> int:
    """How many times the fused forward computes each depthwise output z[n, k, p] under
    ``cfg``: 1 on the z-stationary path, else once per M block (n_m_blocks)."""
    return 1 if dsd_z_stationary(CM, cfg) else triton.cdiv(M, cfg["BLOCK_M"])


#: the widest C*m (rounded up to a power of two) whose mid layer norm the fused forward takes,
#: by element size: the z-stationary tile of ``configs.fused_norm_config`` compiles without
#: spills there on sm_80 and sm_90 with Triton 3.6 and 3.9 (K 3, 5 and 7, 1D and 2D, NHWC
#: and NCHW; ``triton-dsd inspect`` holds the ConvNeXt-T stage-3 case, C*m = 384). One step
#: wider spills: [16 x 1024] 16-bit and [16 x 512] fp32 channels_last tiles on 8 warps (and
#: on 16), fp64 [32 x 128] on 8 or 16 warps; so ConvNeXt's C*m = 768 runs unfused
DSD_MID_NORM_MAX_CM = {2: 512, 4: 256, 8: 64}


def dsd_mid_norm_fits(CM: int, dtype: torch.dtype) -> bool:
    """True if the fused forward can take a layer norm over C*m = CM channels in ``dtype``
    (every channel of a pixel in one z-stationary tile); else the caller must run the layer
    unfused (``dsd_fwd`` refuses it with NotImplementedError)."""
    elem = torch.empty((), dtype=dtype).element_size()
    cap = DSD_MID_NORM_MAX_CM.get(elem)
    return cap is not None and 1 <= CM and _pow2(CM) <= cap


def dsd_norm_config(CM: int, M: int, P: int, dtype: torch.dtype, channels_last: bool,
                    cfg: dict, default: Optional[dict] = None) -> dict:
    """The config of a dsd_fwd launch with a mid layer norm (which needs every channel of a
    pixel in one program): ``cfg`` if it is z-stationary (BLOCK_K >= CM) and not the
    family's ``default``; else ``configs.fused_norm_config``'s."""
    if dsd_z_stationary(CM, cfg) and cfg != default:
        return cfg
    elem = torch.empty((), dtype=dtype).element_size()
    norm_cfg = configs.fused_norm_config(CM, M, P, elem, "cl" if channels_last else "nchw")
    if norm_cfg is None:
        raise NotImplementedError(f"dsd_fwd: C*m = {CM} channels are too many for one tile, "
                                  f"which a layer norm between the stages needs")
    return norm_cfg


def _epilogue_vectors(where: str, epi: Epilogue, CM: int, M: int, dtype: torch.dtype):
    """(mid scale, mid shift, out scale, out shift) as the fused kernels read them: contiguous,
    C*m / M long (a missing shift is zeros in the accumulator dtype); None, None for a side
    without a scale (a shift without its scale is an error)."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    out = []
    for scale, shift, channels, side in ((epi.mid_scale, epi.mid_shift, CM, "mid"),
                                         (epi.out_scale, epi.out_shift, M, "out")):
        if scale is None:
            if shift is not None:
                raise ValueError(f"{where}: the {side} epilogue has a shift but no scale")
            out += [None, None]
            continue
        if shift is None:
            shift = torch.zeros(channels, dtype=acc, device=scale.device)
        for name, t in (("scale", scale), ("shift", shift)):
            if t.numel() != channels:
                raise ValueError(f"{where}: the {side} epilogue's {name} has {t.numel()} "
                                 f"elements, not {channels}")
        out += [scale.reshape(-1).contiguous(), shift.reshape(-1).contiguous()]
    return tuple(out)


def dsd_fwd(x: torch.Tensor, dw_weight: torch.Tensor, dw_bias: Optional[torch.Tensor],
            pw_weight: torch.Tensor, pw_bias: Optional[torch.Tensor], stride: Sequence[int],
            pads: Sequence[int], dilation: Sequence[int], channels_last: bool,
            cfg: Optional[dict] = None, epilogue: Optional[Epilogue] = None) -> torch.Tensor:
    """y = pointwise(depthwise(x)) in ONE launch; the depthwise output stays on chip.

    ``epilogue`` (``triton_dsd.epilogue.Epilogue``; None: none) adds the per-channel
    scale/shift and activation between the stages (C*m channels) and after the pointwise (M
    channels): y = act_out((act_mid(z * s_mid + t_mid) @ w_pw + b_pw) * s_out + t_out). A
    scale turns its affine on (a missing shift is zero); a shift without its scale is an
    error. ``epilogue.mid_norm`` (NORM_LAYER) first normalises z over its C*m channels per
    pixel (``F.layer_norm`` with ``epilogue.mid_eps``; s_mid/t_mid its weight and bias): the
    launch then takes a z-stationary config (``dsd_norm_config``), and C*m past
    ``dsd_mid_norm_fits`` is refused (NotImplementedError) before anything runs."""
    N, C, H, W = x.shape
    CM, _, KH, KW = dw_weight.shape
    M = pw_weight.shape[0]
    epi = epilogue if epilogue is not None else Epilogue()
    mid_norm = int(epi.mid_norm)
    if mid_norm not in (NORM_NONE.value, NORM_LAYER.value):
        raise ValueError(f"dsd_fwd: unknown mid normalisation code {epi.mid_norm!r} (0: none, "
                         f"1: layer norm)")
    if mid_norm and not dsd_mid_norm_fits(CM, x.dtype):
        raise NotImplementedError(
            f"dsd_fwd: a layer norm between the stages needs all C*m = {CM} channels of a pixel "
            f"in one tile; {x.dtype} takes at most {DSD_MID_NORM_MAX_CM.get(x.element_size())} "
            f"(check launchers.dsd_mid_norm_fits and run the layer unfused)")
    OH, OW = shapes.out_sizes((H, W), (KH, KW), stride, pads, dilation)
    y = _runtime.new_output((N, M, OH, OW), x, channels_last)
    if y.numel() == 0:
        return y
    geo, (pt, pl) = _geometry(stride, pads, dilation, (KH, KW))
    syp = y.stride(3) if OW > 1 else y.stride(2)
    dw_bias, pw_bias = _contiguous(dw_bias), _contiguous(pw_bias)

    mid_s, mid_t, out_s, out_t = _epilogue_vectors("dsd_fwd", epi, CM, M, x.dtype)
    fam = _F["dsd_fwd"]

    # taps flattened: tap (kh, kw) at (kh*KW + kw)*tap (the register windows read them so)
    wd, tap, stride_wdc = _taps(dw_weight)

    fields = fam.key(CM, M, OH, OW, (KH, KW), stride, dilation, CM // C, channels_last)

    def run(c):
        if mid_norm:  # the norm sees every channel of a pixel: a z-stationary config
            c = dsd_norm_config(CM, M, OH * OW, x.dtype, channels_last, c,
                                fam.default(fields, x.element_size()))
        # z-stationary: one program per pixel block loops over every M block (n_mb = 1)
        n_pb, n_mb = triton.cdiv(OH * OW, c["BLOCK_P"]), dsd_recompute_factor(CM, M, c)
        unroll_kw, pix_major = dsd_tap_options(x, CM, KW, c)
        idx64 = needs_int64(x, y)
        win = dsd_window(x, CM, KW, c, idx64, dilation[1], stride[1])
        if win > 1:  # the windows walk a loop over kernel rows, each row's taps unrolled
            unroll_kw = True
        # register windows: N*OH image rows of cdiv(OW, win) segments, BLOCK_P // win a program
        n_img_rows = N * OH
        n_rows = n_img_rows * triton.cdiv(OW, win)
        grid = triton.cdiv(n_rows, c["BLOCK_P"] // win) if win > 1 else N * n_pb * n_mb
        _runtime.launch(
            fam.kernel, (grid,),
            x, wd, dw_bias, mid_s, mid_t, pw_weight, pw_bias, out_s, out_t, y,
            CM, M, H, W, OH, OW, n_pb, n_mb, n_rows, n_img_rows,
            *x.stride(), stride_wdc, KW * tap, tap,
            pw_weight.stride(0), pw_weight.stride(1), y.stride(0), y.stride(1), syp, pt, pl,
            float(epi.mid_eps),
            MULT=CM // C, HAS_DW_BIAS=dw_bias is not None,
            HAS_PW_BIAS=pw_bias is not None, MID_NORM=mid_norm,
            HAS_MID_AFFINE=mid_s is not None,
            MID_ACT=int(epi.mid_act), HAS_OUT_AFFINE=out_s is not None,
            OUT_ACT=int(epi.out_act), ALLOW_TF32=allow_tf32(x.dtype),
            IDX64=idx64, ACC=acc_dtype(x.dtype),
            Z_STATIONARY=dsd_z_stationary(CM, c), UNROLL_KW=unroll_kw, PIX_MAJOR=pix_major,
            EVEN_K=CM % c["BLOCK_K"] == 0, WIN=win, **geo, **c,
            # windows past 16 taps: ptxas caps 5x5 at 168 registers and spills, as depthwise's
            **(_window_options(KH, KW) if win > 1 else {}))
        return y

    return dispatch.run(fam.name, fields, x, run, cfg)


# --------------------------------------------------------------------------- decode step
#: the step's partial sums and counters, per (device, stream, accumulator dtype, atomic): the
#: counters, and the atomic sums, are zero between launches (the kernel zeroes what it used);
#: grown on demand. One per stream: steps queued on one stream run in order, so layers share it.
_STEP_SPACE: dict = {}
#: elements of the state tile [BLOCK_ROWS, BLOCK_S] (rows x frames) one shift iteration moves
STEP_SHIFT_ELEMS = 2048
#: frames a shift tile holds at most (longer states move in several tiles per row)
STEP_SHIFT_FRAMES = 512


def _step_space(device: torch.device, acc: torch.dtype, atomic: bool, n_part: int,
                n_count: int) -> Tuple[torch.Tensor, torch.Tensor]:
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        # under CUDA graph capture a zero-fill runs only when that graph replays, and graphs
        # captured on one stream would share a cached workspace: each capture gets its own
        return (torch.zeros(max(n_part, 1), dtype=acc, device=device),
                torch.zeros(max(n_count, 1), dtype=torch.int32, device=device))
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (str(device), stream, acc, atomic)
    part, count = _STEP_SPACE.get(key, (None, None))
    if part is None or part.numel() < n_part:
        part = torch.zeros(max(n_part, 1), dtype=acc, device=device)
    if count is None or count.numel() < n_count:
        count = torch.zeros(max(n_count, 1), dtype=torch.int32, device=device)
    _STEP_SPACE[key] = (part, count)
    return part, count


#: C*M from which a step of at most 16 streams takes 256-wide M blocks (below, 64)
STEP_WIDE_M_WEIGHTS = 512 * 512


def step_config(N: int, C: int, M: int, sms: int) -> dict:
    """The step's tiles. Streams BLOCK_N (16..64: the tensor-core product's rows). Channel
    blocks BLOCK_C of about 2*N channels (16..128): each channel block adds N*M fp32 partial
    sums into y (L2 traffic), so with 2*N channels a block those sums weigh about what the
    block's pointwise weights do (C*M 16-bit elements: the bytes that bound a decode step);
    then the M blocks split over programs until about one program per SM reads its share.
    A [BLOCK_N, BLOCK_C] tile stays at 4096 elements (64 x 128 spills on sm_80/sm_90)."""
    block_n = min(64, max(16, _pow2(N)))
    # a few streams and a big weight: wide M blocks, fewer (barrier + counter) round trips a
    # program and more weight bytes in flight (model: N16 C=M=1024 2.05 -> 0.73 us)
    wide = N <= 16 and C * M >= STEP_WIDE_M_WEIGHTS
    block_m = min(256 if wide else 64, max(16, _pow2(M)))
    n_nb, n_mb = triton.cdiv(N, block_n), triton.cdiv(M, block_m)
    block_c = min(128, max(16, _pow2(2 * N)), max(16, _pow2(C)), 4096 // block_n)
    n_cb = triton.cdiv(C, block_c)
    splits = max(1, min(n_mb, triton.cdiv(sms, n_cb * n_nb)))
    per = triton.cdiv(n_mb, splits)
    return dict(BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_M=block_m,
                M_SPLITS=triton.cdiv(n_mb, per), mb_per_split=per,
                num_warps=4 if block_n * max(block_c, block_m) <= 2048 else 8)


def dsd_step(x: torch.Tensor, state: torch.Tensor, dw_weight: torch.Tensor,
             dw_bias: Optional[torch.Tensor], pw_weight: torch.Tensor,
             pw_bias: Optional[torch.Tensor], dilation: int, deterministic: bool,
             epilogue: Optional[Epilogue] = None, cfg: Optional[dict] = None) -> torch.Tensor:
    """One decode frame of the causal separable layer: y_t (N, M) from x_t (N, C) and the conv
    state (N, C, dilation*(K-1)) (the last input frames, oldest first), in ONE launch; the
    state moves one frame in place. Weights (C*m, 1, 1, K) and (M, C*m, 1, 1) as the other
    launchers take them; ``epilogue`` without a norm (every channel of a stream would have to
    meet in one program)."""
    N, C = x.shape
    CM, _, _, K = dw_weight.shape
    M = pw_weight.shape[0]
    epi = epilogue if epilogue is not None else Epilogue()
    if int(epi.mid_norm):
        raise NotImplementedError("dsd_step: a layer norm between the stages is not supported "
                                  "by the decode step (its channel blocks meet only in y)")
    y = _runtime.new_output((N, M, 1, 1), x, False).view(N, M)
    if y.numel() == 0:
        return y
    c = dict(cfg) if cfg is not None else step_config(N, C, M, _runtime.num_sms(x.device))
    S = dilation * (K - 1)
    n_nb, n_cb = triton.cdiv(N, c["BLOCK_N"]), triton.cdiv(C, c["BLOCK_C"])
    n_mb = triton.cdiv(M, c["BLOCK_M"])
    if c["M_SPLITS"] * c["mb_per_split"] < n_mb or n_nb > 65535 or c["M_SPLITS"] > 65535:
        raise ValueError(f"dsd_step: the config {c} does not cover the {n_mb} M blocks, or "
                         f"its grid passes 65535 programs along a dimension (N = {N})")
    split_c = n_cb > 1
    atomic = split_c and not deterministic
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    n_part = (N * M if atomic else n_cb * N * M) if split_c else 0
    part, count = _step_space(x.device, acc, atomic, n_part, n_nb * (n_cb + n_mb))
    block_s = min(_pow2(max(S - 1, 1)), STEP_SHIFT_FRAMES)
    block_rows = min(max(1, STEP_SHIFT_ELEMS // block_s), c["BLOCK_N"] * c["BLOCK_C"])
    dw_bias, pw_bias = _contiguous(dw_bias), _contiguous(pw_bias)
    mid_s, mid_t, out_s, out_t = _epilogue_vectors("dsd_step", epi, CM, M, x.dtype)
    _runtime.launch(
        registry.STEP_KERNEL, (n_cb, c["M_SPLITS"], n_nb),
        x, state, dw_weight, dw_bias, mid_s, mid_t, pw_weight, pw_bias, out_s, out_t, y,
        part, count, N, C, M, n_cb, n_mb, c["mb_per_split"],
        x.stride(0), x.stride(1), state.stride(0), state.stride(1), state.stride(2),
        dw_weight.stride(0), dw_weight.stride(3), pw_weight.stride(0), pw_weight.stride(1),
        y.stride(0), y.stride(1),
        K=K, DIL=dilation, MULT=CM // C, HAS_DW_BIAS=dw_bias is not None,
        HAS_MID_AFFINE=mid_s is not None, MID_ACT=int(epi.mid_act),
        HAS_PW_BIAS=pw_bias is not None, HAS_OUT_AFFINE=out_s is not None,
        OUT_ACT=int(epi.out_act), SPLIT_C=split_c, ATOMIC=atomic, M_SPLITS=c["M_SPLITS"],
        ALLOW_TF32=allow_tf32(x.dtype), IDX64=needs_int64(x, state, dw_weight, pw_weight),
        ACC=acc_dtype(x.dtype), BLOCK_N=c["BLOCK_N"], BLOCK_C=c["BLOCK_C"],
        BLOCK_M=c["BLOCK_M"], BLOCK_ROWS=block_rows, BLOCK_S=block_s,
        num_warps=c["num_warps"])
    return y
