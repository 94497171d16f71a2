"""The fused depthwise-separable dilated convolution forward: one kernel, z never leaves the chip."""
import triton
import triton.language as tl

from triton_dsd.kernels._common import (NORM_LAYER, NORM_NONE, activation, channel_epilogue,
                                        channel_layer_norm, dot_acc, output_tile,
                                        store_output_epilogue)
from triton_dsd.kernels.depthwise import _segments, _window_row, _zeros


@triton.jit
def _dw_tap(z, x_base, wd_ptr, ci, kk, mask_k, oh, ow, mask_p, kh, kw, H, W, stride_xc,
            stride_xh, stride_xw, stride_wdc, stride_wdh, stride_wdw, pad_h, pad_w,
            STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, DIL_H: tl.constexpr,
            DIL_W: tl.constexpr, ACC: tl.constexpr, PIX_MAJOR: tl.constexpr,
            EVEN_K: tl.constexpr):
    """z += x[ci(k), ih(p, kh), iw(p, kw)] * wd[k, kh, kw] for one tap (kh, kw); z is [p, k],
    or [k, p] when PIX_MAJOR. Padding taps, padded pixels and (unless EVEN_K, every channel
    lane real) padded channel lanes are masked off: no load, zero."""
    ih = oh * STRIDE_H - pad_h + kh * DIL_H
    iw = ow * STRIDE_W - pad_w + kw * DIL_W
    mask_x = mask_p & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    off_x = ih * stride_xh + iw * stride_xw
    w_ptrs = wd_ptr + kk * stride_wdc + kh * stride_wdh + kw * stride_wdw
    if EVEN_K:  # no padded channel lanes: a mask per pixel, not per element
        wv = tl.load(w_ptrs).to(ACC)
    else:
        wv = tl.load(w_ptrs, mask=mask_k, other=0.0).to(ACC)
    if PIX_MAJOR:
        if EVEN_K:
            mask = tl.broadcast_to(mask_x[None, :], z.shape)
        else:
            mask = mask_k[:, None] & mask_x[None, :]
        xv = tl.load(x_base + off_x[None, :] + ci[:, None] * stride_xc, mask=mask,
                     other=0.0).to(ACC)
        z += xv * wv[:, None]
    else:
        if EVEN_K:
            mask = tl.broadcast_to(mask_x[:, None], z.shape)
        else:
            mask = mask_x[:, None] & mask_k[None, :]
        xv = tl.load(x_base + off_x[:, None] + ci[None, :] * stride_xc, mask=mask,
                     other=0.0).to(ACC)
        z += xv * wv[None, :]
    return z


@triton.jit
def _dw_tile(x_base, wd_ptr, bd_ptr, kk, mask_k, oh, ow, mask_p, H, W, stride_xc, stride_xh,
             stride_xw, stride_wdc, stride_wdh, stride_wdw, pad_h, pad_w,
             KH: tl.constexpr, KW: tl.constexpr, STRIDE_H: tl.constexpr,
             STRIDE_W: tl.constexpr, DIL_H: tl.constexpr, DIL_W: tl.constexpr,
             MULT: tl.constexpr, HAS_DW_BIAS: tl.constexpr, ACC: tl.constexpr,
             IDX64: tl.constexpr, UNROLL_KW: tl.constexpr, PIX_MAJOR: tl.constexpr,
             EVEN_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    """The depthwise tile z[p, k] (+ bd[k]) in ACC, [BLOCK_P, BLOCK_K], for the pixels p and
    the channels kk; each in-range tap of each (p, k) is loaded and multiplied exactly once.

    UNROLL_KW: a loop over kernel rows, each row's KW taps unrolled (their loads in flight
    together); else, and with 64-bit offsets on a tile past 2048 elements (twice the address
    registers), one tap per loop iteration: a wide z tile leaves no registers for a row of
    loads. PIX_MAJOR: the tile is built as [k, p] (lanes along pixels: coalesced loads when
    x's pixels are contiguous, NCHW / NCL) and transposed at the end."""
    ci = kk // MULT
    if PIX_MAJOR:
        z = tl.zeros([BLOCK_K, BLOCK_P], dtype=ACC)
    else:
        z = tl.zeros([BLOCK_P, BLOCK_K], dtype=ACC)
    if UNROLL_KW and not (IDX64 and BLOCK_P * BLOCK_K > 2048):
        for kh in range(KH):
            for kw in tl.static_range(KW):
                z = _dw_tap(z, x_base, wd_ptr, ci, kk, mask_k, oh, ow, mask_p, kh, kw, H, W,
                            stride_xc, stride_xh, stride_xw, stride_wdc, stride_wdh,
                            stride_wdw, pad_h, pad_w, STRIDE_H, STRIDE_W, DIL_H, DIL_W, ACC,
                            PIX_MAJOR, EVEN_K)
    else:
        for t in tl.range(0, KH * KW, loop_unroll_factor=1):
            z = _dw_tap(z, x_base, wd_ptr, ci, kk, mask_k, oh, ow, mask_p, t // KW, t % KW, H,
                        W, stride_xc, stride_xh, stride_xw, stride_wdc, stride_wdh, stride_wdw,
                        pad_h, pad_w, STRIDE_H, STRIDE_W, DIL_H, DIL_W, ACC, PIX_MAJOR, EVEN_K)
    if PIX_MAJOR:
        z = tl.trans(z)
    if HAS_DW_BIAS:
        z += tl.load(bd_ptr + kk, mask=mask_k, other=0.0).to(ACC)[None, :]
    return z


@triton.jit
def dsd_fwd_kernel(
    x_ptr,  # input x (N, C, H, W), any strides
    wd_ptr,  # depthwise weight (C*MULT, 1, KH, KW), any strides
    bd_ptr,  # depthwise bias (C*MULT,), contiguous; None when HAS_DW_BIAS is False
    mid_scale_ptr,  # mid epilogue scale (C*MULT,), contiguous, ACC; None unless HAS_MID_AFFINE
    mid_shift_ptr,  # mid epilogue shift (C*MULT,), contiguous, ACC; None unless HAS_MID_AFFINE
    wp_ptr,  # pointwise weight as (M, C*MULT) by strides
    bp_ptr,  # pointwise bias (M,), contiguous; None when HAS_PW_BIAS is False
    out_scale_ptr,  # output epilogue scale (M,), contiguous, ACC; None unless HAS_OUT_AFFINE
    out_shift_ptr,  # output epilogue shift (M,), contiguous, ACC; None unless HAS_OUT_AFFINE
    y_ptr,  # output y (N, M, OH, OW); its pixels flatten (stride_yp)
    CM, M, H, W, OH, OW, n_p_blocks, n_m_blocks, n_rows, n_img_rows,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_wdc, stride_wdh, stride_wdw,
    stride_wpm, stride_wpk,
    stride_yn, stride_ym, stride_yp,
    pad_h, pad_w,
    mid_eps,  # the mid layer norm's epsilon (a Python float: fp32); read only with NORM_LAYER
    KH: tl.constexpr, KW: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    DIL_H: tl.constexpr, DIL_W: tl.constexpr, MULT: tl.constexpr,
    HAS_DW_BIAS: tl.constexpr, HAS_PW_BIAS: tl.constexpr,
    MID_NORM: tl.constexpr, HAS_MID_AFFINE: tl.constexpr, MID_ACT: tl.constexpr,
    HAS_OUT_AFFINE: tl.constexpr, OUT_ACT: tl.constexpr,
    ALLOW_TF32: tl.constexpr, IDX64: tl.constexpr, ACC: tl.constexpr,
    Z_STATIONARY: tl.constexpr, UNROLL_KW: tl.constexpr, PIX_MAJOR: tl.constexpr,
    EVEN_K: tl.constexpr, WIN: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[n, m, p] = act_out((sum_k v[n, k, p] * wp[m, k] + bp[m]) * out_scale[m] + out_shift[m]),
    v[n, k, p] = act_mid(norm(u)[n, k, p] * mid_scale[k] + mid_shift[k]), where for p = (oh, ow)
    u[n, k, oh, ow] = sum_{kh, kw} x[n, k // MULT, oh*S_H - pad_h + kh*D_H, ow*S_W - pad_w + kw*D_W] * wd[k, kh, kw] + bd[k]
    and norm(u) = u (MID_NORM = NORM_NONE), or (MID_NORM = NORM_LAYER) a layer norm over the
    CM channels of each pixel, biased variance (``F.layer_norm``):
    norm(u)[n, k, p] = (u[n, k, p] - mean[n, p]) / sqrt(var[n, p] + mid_eps),
    mean[n, p] = sum_k u[n, k, p] / CM, var[n, p] = sum_k (u[n, k, p] - mean[n, p])^2 / CM.

    That is dw -> batch norm (eval, folded to a scale/shift per channel) -> activation ->
    pointwise -> batch norm -> activation in one launch; or, with the layer norm (its weight
    and bias as mid_scale / mid_shift), dw -> layer norm -> pointwise -> activation (a
    ConvNeXt block up to its second 1x1). Each part is optional: bd with HAS_DW_BIAS, bp
    with HAS_PW_BIAS, the layer norm with MID_NORM, the scale/shift pairs with HAS_MID_AFFINE
    (per depthwise channel k) and HAS_OUT_AFFINE (per output channel m), the activations by
    their codes MID_ACT and OUT_ACT (``_common.activation``; ACT_IDENTITY: none). With all
    five off the kernel is the plain layer (no extra loads or instructions). The layer norm
    needs every channel of a pixel in one program: z-stationary paths only (the launcher
    picks one; the recompute path refuses MID_NORM at compile time).

    z = v is computed in registers (ACC), both epilogues in ACC; v is rounded to the input
    dtype (as the unfused pair would store it) and fed straight into tl.dot: it never
    touches global memory. y is cast on store.

    Z_STATIONARY (BLOCK_K >= CM): a program owns BLOCK_P pixels and every output channel. It
    computes its z tile [BLOCK_P, BLOCK_K] (all CM channels) once, then loops over the M
    blocks: y block = z @ wp block (PIX_MAJOR: y^T = wp @ z^T, so BLOCK_M, not BLOCK_P, is
    the MMA's row count). Grid: (N * n_p_blocks,), n_m_blocks is 1. UNROLL_KW, PIX_MAJOR and
    EVEN_K (CM % BLOCK_K == 0) shape the tap loop (``_dw_tile``); the launcher sets them.

    WIN > 1 (z-stationary, channels-contiguous x only): register windows along W, as in
    ``depthwise.depthwise_fwd_kernel``. A program owns BLOCK_P // WIN row segments of WIN
    consecutive outputs (``_segments``: n_rows segments over n_img_rows = N*OH image rows);
    its z is WIN tensors z_j [BLOCK_P // WIN, BLOCK_K], each source column loaded and
    converted once per kernel row and used by every output of the segment that reads it
    (taps flattened: wd[k, kh, kw] at (kh*KW + kw)*stride_wdw + k*stride_wdc). Each M block
    is then WIN products z_j @ wp. Grid: (cdiv(n_rows, BLOCK_P // WIN),).

    Otherwise (CM too wide for one tile): a program owns [BLOCK_P pixels x BLOCK_M outputs]
    and, for each BLOCK_K chunk of the CM channels, computes that z chunk and accumulates its
    product: z is recomputed for each of the n_m_blocks M blocks of a pixel block. No
    MID_NORM here (a chunk does not see its pixels' other channels).
    Grid: (N * n_p_blocks * n_m_blocks,), M blocks of one pixel block adjacent.
    """
    if WIN > 1:
        _dsd_fwd_windows(x_ptr, wd_ptr, bd_ptr, mid_scale_ptr, mid_shift_ptr, wp_ptr, bp_ptr,
                         out_scale_ptr, out_shift_ptr, y_ptr, CM, M, H, W, OH, OW,
                         n_rows, n_img_rows, stride_xn, stride_xc, stride_xh, stride_xw,
                         stride_wdc, stride_wdw, stride_wpm, stride_wpk, stride_yn, stride_ym,
                         stride_yp, pad_h, pad_w, mid_eps, KH, KW, STRIDE_H, STRIDE_W, DIL_H,
                         DIL_W, MULT, HAS_DW_BIAS, HAS_PW_BIAS, MID_NORM, HAS_MID_AFFINE, MID_ACT,
                         HAS_OUT_AFFINE, OUT_ACT, ALLOW_TF32, IDX64, ACC, EVEN_K, WIN,
                         BLOCK_P // WIN, BLOCK_M, BLOCK_K)
    else:
        n, p, m = output_tile(n_p_blocks, n_m_blocks, BLOCK_P, BLOCK_M, IDX64)
        mask_p = p < OH * OW
        oh = p // OW
        ow = p % OW
        x_base = x_ptr + n * stride_xn
        if Z_STATIONARY:
            kk = tl.arange(0, BLOCK_K)
            if IDX64:
                kk = kk.to(tl.int64)
            mask_k = kk < CM
            z = _dw_tile(x_base, wd_ptr, bd_ptr, kk, mask_k, oh, ow, mask_p, H, W, stride_xc,
                         stride_xh, stride_xw, stride_wdc, stride_wdh, stride_wdw, pad_h, pad_w,
                         KH, KW, STRIDE_H, STRIDE_W, DIL_H, DIL_W, MULT, HAS_DW_BIAS, ACC,
                         IDX64, UNROLL_KW, PIX_MAJOR, EVEN_K, BLOCK_P, BLOCK_K)
            if MID_NORM == NORM_LAYER:  # over the CM channels of each pixel (z's axis 1)
                z = channel_layer_norm(z, mask_k, CM, mid_eps, 1)
            # the mid epilogue: per depthwise channel (z's axis 1), in ACC, before the rounding
            z = channel_epilogue(z, mid_scale_ptr, mid_shift_ptr, kk, mask_k, HAS_MID_AFFINE,
                                 MID_ACT, ACC, 1)
            zq = z.to(wp_ptr.dtype.element_ty)
            for m0 in range(0, M, BLOCK_M):
                mm = m0 + m
                mask_m = mm < M
                if PIX_MAJOR:
                    # y^T = wp @ z^T: the outputs are the MMA's rows (BLOCK_M >= 64 for sm_90's
                    # HGMMA), the pixels its columns, z^T its shared-memory operand
                    wp = tl.load(wp_ptr + mm[:, None] * stride_wpm + kk[None, :] * stride_wpk,
                                 mask=mask_m[:, None] & mask_k[None, :], other=0.0)
                    acc = tl.trans(dot_acc(wp, tl.trans(zq),
                                           tl.zeros([BLOCK_M, BLOCK_P], dtype=ACC),
                                           ALLOW_TF32, ACC))
                else:
                    wp = tl.load(wp_ptr + kk[:, None] * stride_wpk + mm[None, :] * stride_wpm,
                                 mask=mask_k[:, None] & mask_m[None, :], other=0.0)
                    acc = dot_acc(zq, wp, tl.zeros([BLOCK_P, BLOCK_M], dtype=ACC), ALLOW_TF32, ACC)
                store_output_epilogue(acc, bp_ptr, out_scale_ptr, out_shift_ptr, y_ptr, n, p, mm,
                                      mask_p, mask_m, stride_yn, stride_yp, stride_ym,
                                      HAS_PW_BIAS, HAS_OUT_AFFINE, OUT_ACT, ACC)
        else:
            tl.static_assert(MID_NORM == NORM_NONE,
                             "the mid layer norm needs every channel in one tile (BLOCK_K >= CM)")
            mask_m = m < M
            acc = tl.zeros([BLOCK_P, BLOCK_M], dtype=ACC)
            for k0 in range(0, CM, BLOCK_K):
                kk = k0 + tl.arange(0, BLOCK_K)
                if IDX64:
                    kk = kk.to(tl.int64)
                mask_k = kk < CM
                z = _dw_tile(x_base, wd_ptr, bd_ptr, kk, mask_k, oh, ow, mask_p, H, W, stride_xc,
                             stride_xh, stride_xw, stride_wdc, stride_wdh, stride_wdw, pad_h,
                             pad_w, KH, KW, STRIDE_H, STRIDE_W, DIL_H, DIL_W, MULT, HAS_DW_BIAS,
                             ACC, IDX64, UNROLL_KW, False, False, BLOCK_P, BLOCK_K)
                # the mid epilogue is per channel: it applies to each chunk on its own
                z = channel_epilogue(z, mid_scale_ptr, mid_shift_ptr, kk, mask_k, HAS_MID_AFFINE,
                                     MID_ACT, ACC, 1)
                wp = tl.load(wp_ptr + kk[:, None] * stride_wpk + m[None, :] * stride_wpm,
                             mask=mask_k[:, None] & mask_m[None, :], other=0.0)
                acc = dot_acc(z.to(wp_ptr.dtype.element_ty), wp, acc, ALLOW_TF32, ACC)
            store_output_epilogue(acc, bp_ptr, out_scale_ptr, out_shift_ptr, y_ptr, n, p, m,
                                  mask_p, mask_m, stride_yn, stride_yp, stride_ym, HAS_PW_BIAS,
                                  HAS_OUT_AFFINE, OUT_ACT, ACC)


@triton.jit
def _dsd_fwd_windows(x_ptr, wd_ptr, bd_ptr, mid_scale_ptr, mid_shift_ptr, wp_ptr, bp_ptr,
                     out_scale_ptr, out_shift_ptr, y_ptr, CM, M, H, W, OH, OW,
                     n_rows, n_img_rows, stride_xn, stride_xc, stride_xh, stride_xw,
                     stride_wdc, stride_wt, stride_wpm, stride_wpk, stride_yn, stride_ym,
                     stride_yp, pad_h, pad_w, mid_eps, KH: tl.constexpr, KW: tl.constexpr,
                     STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, DIL_H: tl.constexpr,
                     DIL_W: tl.constexpr, MULT: tl.constexpr, HAS_DW_BIAS: tl.constexpr,
                     HAS_PW_BIAS: tl.constexpr, MID_NORM: tl.constexpr,
                     HAS_MID_AFFINE: tl.constexpr,
                     MID_ACT: tl.constexpr, HAS_OUT_AFFINE: tl.constexpr, OUT_ACT: tl.constexpr,
                     ALLOW_TF32: tl.constexpr, IDX64: tl.constexpr, ACC: tl.constexpr,
                     EVEN_K: tl.constexpr, WIN: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """The z-stationary fused forward on register windows (``dsd_fwd_kernel``, WIN > 1): the
    layer norm (over each pixel's channels, z_j's axis 1) and the mid epilogue apply to each
    window position's z_j, the output epilogue to each product."""
    n, oh, ow0, valid = _segments(tl.program_id(0), n_rows, n_img_rows, OH, BLOCK_R, WIN,
                                  IDX64)
    kk = tl.arange(0, BLOCK_K)
    if IDX64:
        kk = kk.to(tl.int64)
    mask_k = kk < CM
    x_base = x_ptr + (n * stride_xn)[:, None] + ((kk // MULT) * stride_xc)[None, :]
    col0 = ow0 * STRIDE_W - pad_w
    z = _zeros(BLOCK_R, BLOCK_K, WIN, ACC)
    for kh in range(KH):
        ih = oh * STRIDE_H - pad_h + kh * DIL_H
        row_ok = valid & (ih >= 0) & (ih < H)
        z = _window_row(z, x_base + (ih * stride_xh)[:, None], row_ok, wd_ptr, kk, mask_k, kh,
                        col0, 0, 0, W, stride_xw, stride_wt, stride_wdc, KW, WIN, STRIDE_W,
                        DIL_W, False, 0, False, EVEN_K, ACC)
    # the depthwise bias, the layer norm and the mid epilogue (in ACC) on each window position
    if HAS_DW_BIAS:
        bd = tl.load(bd_ptr + kk, mask=mask_k, other=0.0).to(ACC)
    if HAS_MID_AFFINE:
        mid_s = tl.load(mid_scale_ptr + kk, mask=mask_k, other=0.0).to(ACC)
        mid_t = tl.load(mid_shift_ptr + kk, mask=mask_k, other=0.0).to(ACC)
    zq = ()
    for j in tl.static_range(WIN):
        zj = z[j]
        if HAS_DW_BIAS:
            zj = zj + bd[None, :]
        if MID_NORM == NORM_LAYER:
            zj = channel_layer_norm(zj, mask_k, CM, mid_eps, 1)
        if HAS_MID_AFFINE:
            zj = zj * mid_s[None, :] + mid_t[None, :]
        zj = activation(zj, MID_ACT)
        zq = zq + (zj.to(wp_ptr.dtype.element_ty),)
    # output rows: pixel (n, oh, ow0 + j) of each segment
    y_rows = y_ptr + n * stride_yn + (oh * OW + ow0) * stride_yp
    for m0 in range(0, M, BLOCK_M):
        mm = m0 + tl.arange(0, BLOCK_M)
        mask_m = mm < M
        wp = tl.load(wp_ptr + kk[:, None] * stride_wpk + mm[None, :] * stride_wpm,
                     mask=mask_k[:, None] & mask_m[None, :], other=0.0)
        if HAS_PW_BIAS:
            bp = tl.load(bp_ptr + mm, mask=mask_m, other=0.0).to(ACC)
        if HAS_OUT_AFFINE:
            out_s = tl.load(out_scale_ptr + mm, mask=mask_m, other=0.0).to(ACC)
            out_t = tl.load(out_shift_ptr + mm, mask=mask_m, other=0.0).to(ACC)
        for j in tl.static_range(WIN):
            acc = dot_acc(zq[j], wp, tl.zeros([BLOCK_R, BLOCK_M], dtype=ACC), ALLOW_TF32, ACC)
            if HAS_PW_BIAS:
                acc += bp[None, :]
            if HAS_OUT_AFFINE:
                acc = acc * out_s[None, :] + out_t[None, :]
            acc = activation(acc, OUT_ACT)
            mask = (valid & (ow0 + j < OW))[:, None] & mask_m[None, :]
            tl.store(y_rows[:, None] + j * stride_yp + mm[None, :] * stride_ym,
                     acc.to(y_ptr.dtype.element_ty), mask=mask)
