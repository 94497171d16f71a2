"""Dilated depthwise convolution kernels: forward, input gradient, weight/bias gradient.

Notation (one kernel family for 1D and 2D: 1D is 2D with H = OH = KH = 1)::

    x  (N, C_in,  H,  W)      input, any strides (NCHW, channels_last, sliced views)
    w  (C_out, 1, KH, KW)     weight, C_out = C_in * MULT (depth multiplier)
    y  (N, C_out, OH, OW)     output
    ih = oh * STRIDE_H - pad_h + kh * DIL_H      iw = ow * STRIDE_W - pad_w + kw * DIL_W
    input channel of output channel co:  ci = co // MULT

Tiles are [BLOCK_H, BLOCK_W, BLOCK_C]: with channels_last strides the channel axis is the
contiguous one (16-byte loads); with NCHW strides the W axis is. Every kernel loads, upcasts to
the accumulator dtype ACC (fp32, or fp64 for fp64 tensors), accumulates in ACC and casts on
store. Out-of-range taps (the zero padding; an asymmetric bottom/right pad is implied by the
bounds) are masked loads of zero. When IDX64 is set every element offset is computed in int64;
the batch offset always is. Kernels with at most MAX_UNROLL taps unroll every tap; larger ones
loop over kernel rows (one loop, ``tl.range`` with an unroll factor of KH or 1).
"""
import triton
import triton.language as tl

from triton_dsd.kernels._common import MAX_UNROLL, store_partial, tile_coords


@triton.jit
def _fwd_tap_row(acc, x_base, w_ptr, co, mask_c, oh, ow, kh, H, W, stride_xh, stride_xw,
                 stride_wc, stride_wh, stride_ww, pad_h, pad_w, KW: tl.constexpr,
                 STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, DIL_H: tl.constexpr,
                 DIL_W: tl.constexpr, ACC: tl.constexpr):
    """acc += sum_kw x[ih(kh), iw(kw)] * w[co, kh, kw] for one kernel row kh."""
    ih = oh * STRIDE_H - pad_h + kh * DIL_H
    mask_h = (ih >= 0) & (ih < H)
    for kw in tl.static_range(KW):
        iw = ow * STRIDE_W - pad_w + kw * DIL_W
        mask_w = (iw >= 0) & (iw < W)
        wv = tl.load(w_ptr + co * stride_wc + kh * stride_wh + kw * stride_ww,
                     mask=mask_c, other=0.0).to(ACC)
        mask = mask_h[:, None, None] & mask_w[None, :, None] & mask_c[None, None, :]
        xv = tl.load(x_base + ih[:, None, None] * stride_xh + iw[None, :, None] * stride_xw,
                     mask=mask, other=0.0).to(ACC)
        acc += xv * wv[None, None, :]
    return acc


@triton.jit
def _bwd_input_tap_row(acc, dy_base, w_ptr, ci, mask_c, ih, iw, kh, OH, OW, stride_dyc,
                       stride_dyh, stride_dyw, stride_wc, stride_wh, stride_ww, pad_h, pad_w,
                       KW: tl.constexpr, STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
                       DIL_H: tl.constexpr, DIL_W: tl.constexpr, MULT: tl.constexpr,
                       ACC: tl.constexpr):
    """acc += sum_{kw, j} dy[ci*MULT + j, oh, ow] * w[ci*MULT + j, kh, kw] for one kernel row kh."""
    num_h = ih + pad_h - kh * DIL_H
    oh = num_h // STRIDE_H
    mask_h = (num_h >= 0) & (oh < OH)
    if STRIDE_H > 1:
        mask_h = mask_h & (num_h % STRIDE_H == 0)
    for kw in tl.static_range(KW):
        num_w = iw + pad_w - kw * DIL_W
        ow = num_w // STRIDE_W
        mask_w = (num_w >= 0) & (ow < OW)
        if STRIDE_W > 1:
            mask_w = mask_w & (num_w % STRIDE_W == 0)
        mask = mask_h[:, None, None] & mask_w[None, :, None] & mask_c[None, None, :]
        sp = oh[:, None, None] * stride_dyh + ow[None, :, None] * stride_dyw
        for j in tl.static_range(MULT):
            co = ci * MULT + j
            wv = tl.load(w_ptr + co * stride_wc + kh * stride_wh + kw * stride_ww,
                         mask=mask_c, other=0.0).to(ACC)
            dyv = tl.load(dy_base + sp + co[None, None, :] * stride_dyc,
                          mask=mask, other=0.0).to(ACC)
            acc += dyv * wv[None, None, :]
    return acc


@triton.jit
def depthwise_fwd_kernel(
    x_ptr,  # input x (N, C_in, H, W), any strides
    w_ptr,  # weight (C_out, 1, KH, KW), any strides
    b_ptr,  # bias (C_out,), contiguous; None when HAS_BIAS is False
    y_ptr,  # output y (N, C_out, OH, OW), any strides
    C_out, H, W, OH, OW, n_tiles_h, n_tiles_w, n_c_blocks,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_wc, stride_wh, stride_ww,
    stride_yn, stride_yc, stride_yh, stride_yw,
    pad_h, pad_w,
    KH: tl.constexpr, KW: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    DIL_H: tl.constexpr, DIL_W: tl.constexpr,
    MULT: tl.constexpr, HAS_BIAS: tl.constexpr, IDX64: tl.constexpr, ACC: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """y[n, co, oh, ow] = sum_{kh, kw} x[n, co // MULT, ih, iw] * w[co, 0, kh, kw] + b[co].

    Grid: (N * n_tiles_h * n_tiles_w * n_c_blocks,), channel blocks of one tile adjacent.
    """
    pid = tl.program_id(0)
    n, oh, ow = tile_coords(pid // n_c_blocks, n_tiles_h, n_tiles_w, BLOCK_H, BLOCK_W, IDX64)
    co = (pid % n_c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    if IDX64:
        co = co.to(tl.int64)
    mask_c = co < C_out
    x_base = x_ptr + n * stride_xn + (co // MULT)[None, None, :] * stride_xc
    acc = tl.zeros([BLOCK_H, BLOCK_W, BLOCK_C], dtype=ACC)
    ROW_UNROLL: tl.constexpr = KH if KH * KW <= MAX_UNROLL else 1
    for kh in tl.range(0, KH, loop_unroll_factor=ROW_UNROLL):
        acc = _fwd_tap_row(acc, x_base, w_ptr, co, mask_c, oh, ow, kh, H, W, stride_xh,
                           stride_xw, stride_wc, stride_wh, stride_ww, pad_h, pad_w,
                           KW, STRIDE_H, STRIDE_W, DIL_H, DIL_W, ACC)
    if HAS_BIAS:
        acc += tl.load(b_ptr + co, mask=mask_c, other=0.0).to(ACC)[None, None, :]
    mask = (oh < OH)[:, None, None] & (ow < OW)[None, :, None] & mask_c[None, None, :]
    y_ptrs = (y_ptr + n * stride_yn + oh[:, None, None] * stride_yh + ow[None, :, None] * stride_yw
              + co[None, None, :] * stride_yc)
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def depthwise_bwd_input_kernel(
    dy_ptr,  # output gradient dy (N, C_out, OH, OW), any strides
    w_ptr,  # weight (C_out, 1, KH, KW), any strides
    dx_ptr,  # input gradient dx (N, C_in, H, W), any strides
    C_in, H, W, OH, OW, n_tiles_h, n_tiles_w, n_c_blocks,
    stride_dyn, stride_dyc, stride_dyh, stride_dyw,
    stride_wc, stride_wh, stride_ww,
    stride_dxn, stride_dxc, stride_dxh, stride_dxw,
    pad_h, pad_w,
    KH: tl.constexpr, KW: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    DIL_H: tl.constexpr, DIL_W: tl.constexpr,
    MULT: tl.constexpr, IDX64: tl.constexpr, ACC: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Gather over taps: dx[n, ci, ih, iw] = sum_{j < MULT} sum_{kh, kw} dy[n, ci*MULT + j, oh, ow] * w[ci*MULT + j, 0, kh, kw]

    over the taps whose output position is integral and in range:
    oh = (ih + pad_h - kh * DIL_H) / STRIDE_H with remainder 0 and 0 <= oh < OH (same for ow).
    Grid: (N * n_tiles_h * n_tiles_w * n_c_blocks,), tiles over the input (ih, iw, ci).
    """
    pid = tl.program_id(0)
    n, ih, iw = tile_coords(pid // n_c_blocks, n_tiles_h, n_tiles_w, BLOCK_H, BLOCK_W, IDX64)
    ci = (pid % n_c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    if IDX64:
        ci = ci.to(tl.int64)
    mask_c = ci < C_in
    dy_base = dy_ptr + n * stride_dyn
    acc = tl.zeros([BLOCK_H, BLOCK_W, BLOCK_C], dtype=ACC)
    # the gather keeps more live per tap than the forward (a 5x5 fp32 tile spills unrolled)
    ROW_UNROLL: tl.constexpr = KH if KH * KW * MULT <= MAX_UNROLL // 2 else 1
    for kh in tl.range(0, KH, loop_unroll_factor=ROW_UNROLL):
        acc = _bwd_input_tap_row(acc, dy_base, w_ptr, ci, mask_c, ih, iw, kh, OH, OW,
                                 stride_dyc, stride_dyh, stride_dyw, stride_wc, stride_wh,
                                 stride_ww, pad_h, pad_w, KW, STRIDE_H, STRIDE_W, DIL_H,
                                 DIL_W, MULT, ACC)
    mask = (ih < H)[:, None, None] & (iw < W)[None, :, None] & mask_c[None, None, :]
    dx_ptrs = (dx_ptr + n * stride_dxn + ih[:, None, None] * stride_dxh
               + iw[None, :, None] * stride_dxw + ci[None, None, :] * stride_dxc)
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def depthwise_bwd_weight_kernel(
    x_ptr,  # input x (N, C_in, H, W), any strides
    dy_ptr,  # output gradient dy (N, C_out, OH, OW), any strides
    part_ptr,  # partial sums (n_splits, KH*KW + 1, C_out), contiguous, ACC dtype; row KH*KW is db
    C_out, H, W, OH, OW, n_tiles_h, n_tiles_w, total_tiles, tiles_per_split,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_dyn, stride_dyc, stride_dyh, stride_dyw,
    pad_h, pad_w,
    KH: tl.constexpr, KW: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    DIL_H: tl.constexpr, DIL_W: tl.constexpr,
    MULT: tl.constexpr, HAS_BIAS: tl.constexpr, ATOMIC: tl.constexpr,
    IDX64: tl.constexpr, ACC: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Split reduction over P = N*OH*OW output pixels:

    dw[co, 0, kh, kw] = sum_{n, oh, ow} dy[n, co, oh, ow] * x[n, co // MULT, ih, iw]
    db[co]            = sum_{n, oh, ow} dy[n, co, oh, ow]

    Program (c, s) sums the output tiles [s*tiles_per_split, (s+1)*tiles_per_split) for BLOCK_C
    channels and all taps. ATOMIC: fp32 atomic adds into split row 0 (fast, order varies run to
    run). Otherwise each split stores its own row and ``reduce.splitk_reduce_kernel`` sums the
    rows in a fixed order (bit-identical run to run).
    Grid: (cdiv(C_out, BLOCK_C), n_splits) (n_splits <= 65535 by construction).
    """
    pid_s = tl.program_id(1)
    co = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = co < C_out
    ci = co // MULT
    co_y = co
    if IDX64:
        ci = ci.to(tl.int64)
        co_y = co.to(tl.int64)
    t_start = pid_s * tiles_per_split
    t_end = tl.minimum(t_start + tiles_per_split, total_tiles)
    n_rows: tl.constexpr = KH * KW + 1
    if ATOMIC:
        part_base = part_ptr
    else:
        part_base = part_ptr + tl.cast(pid_s, tl.int64) * (n_rows * C_out)
    for kh in range(KH):
        for kw in tl.static_range(KW):
            acc = tl.zeros([BLOCK_H, BLOCK_W, BLOCK_C], dtype=ACC)
            for t in range(t_start, t_end):
                n, oh, ow = tile_coords(t, n_tiles_h, n_tiles_w, BLOCK_H, BLOCK_W, IDX64)
                mask_o = (oh < OH)[:, None, None] & (ow < OW)[None, :, None] & mask_c[None, None, :]
                dyv = tl.load(dy_ptr + n * stride_dyn + oh[:, None, None] * stride_dyh
                              + ow[None, :, None] * stride_dyw + co_y[None, None, :] * stride_dyc,
                              mask=mask_o, other=0.0).to(ACC)
                ih = oh * STRIDE_H - pad_h + kh * DIL_H
                iw = ow * STRIDE_W - pad_w + kw * DIL_W
                mask = (mask_o & ((ih >= 0) & (ih < H))[:, None, None]
                        & ((iw >= 0) & (iw < W))[None, :, None])
                xv = tl.load(x_ptr + n * stride_xn + ih[:, None, None] * stride_xh
                             + iw[None, :, None] * stride_xw + ci[None, None, :] * stride_xc,
                             mask=mask, other=0.0).to(ACC)
                acc += dyv * xv
            part = tl.sum(tl.sum(acc, axis=1), axis=0)
            store_partial(part_base + (kh * KW + kw) * C_out + co, part, mask_c, ATOMIC)
    if HAS_BIAS:
        acc = tl.zeros([BLOCK_H, BLOCK_W, BLOCK_C], dtype=ACC)
        for t in range(t_start, t_end):
            n, oh, ow = tile_coords(t, n_tiles_h, n_tiles_w, BLOCK_H, BLOCK_W, IDX64)
            mask_o = (oh < OH)[:, None, None] & (ow < OW)[None, :, None] & mask_c[None, None, :]
            acc += tl.load(dy_ptr + n * stride_dyn + oh[:, None, None] * stride_dyh
                           + ow[None, :, None] * stride_dyw + co_y[None, None, :] * stride_dyc,
                           mask=mask_o, other=0.0).to(ACC)
        part = tl.sum(tl.sum(acc, axis=1), axis=0)
        store_partial(part_base + (KH * KW) * C_out + co, part, mask_c, ATOMIC)
