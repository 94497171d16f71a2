"""The fused depthwise-separable dilated convolution forward: one kernel, z never leaves the chip."""
import triton
import triton.language as tl

from triton_dsd.kernels._common import dot_acc, output_tile, store_output


@triton.jit
def _dw_tile_row(z, x_base, wd_ptr, ci, kk, mask_k, oh, ow, mask_p, kh, H, W, stride_xc,
                 stride_xh, stride_xw, stride_wdc, stride_wdh, stride_wdw, pad_h, pad_w,
                 KW: tl.constexpr, STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
                 DIL_H: tl.constexpr, DIL_W: tl.constexpr, ACC: tl.constexpr):
    """z[p, k] += sum_kw x[ci(k), ih(p, kh), iw(p, kw)] * wd[k, kh, kw] for one kernel row kh."""
    ih = oh * STRIDE_H - pad_h + kh * DIL_H
    mask_h = mask_p & (ih >= 0) & (ih < H)
    for kw in tl.static_range(KW):
        iw = ow * STRIDE_W - pad_w + kw * DIL_W
        mask = (mask_h & (iw >= 0) & (iw < W))[:, None] & mask_k[None, :]
        xv = tl.load(x_base + (ih * stride_xh + iw * stride_xw)[:, None] + ci[None, :] * stride_xc,
                     mask=mask, other=0.0).to(ACC)
        wv = tl.load(wd_ptr + kk * stride_wdc + kh * stride_wdh + kw * stride_wdw,
                     mask=mask_k, other=0.0).to(ACC)
        z += xv * wv[None, :]
    return z


@triton.jit
def dsd_fwd_kernel(
    x_ptr,  # input x (N, C, H, W), any strides
    wd_ptr,  # depthwise weight (C*MULT, 1, KH, KW), any strides
    bd_ptr,  # depthwise bias (C*MULT,), contiguous; None when HAS_DW_BIAS is False
    wp_ptr,  # pointwise weight as (M, C*MULT) by strides
    bp_ptr,  # pointwise bias (M,), contiguous; None when HAS_PW_BIAS is False
    y_ptr,  # output y (N, M, OH, OW); its pixels flatten (stride_yp)
    CM, M, H, W, OH, OW, n_p_blocks, n_m_blocks,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_wdc, stride_wdh, stride_wdw,
    stride_wpm, stride_wpk,
    stride_yn, stride_ym, stride_yp,
    pad_h, pad_w,
    KH: tl.constexpr, KW: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    DIL_H: tl.constexpr, DIL_W: tl.constexpr, MULT: tl.constexpr,
    HAS_DW_BIAS: tl.constexpr, HAS_PW_BIAS: tl.constexpr, ALLOW_TF32: tl.constexpr,
    IDX64: tl.constexpr, ACC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[n, m, p] = sum_k z[n, k, p] * wp[m, k] + bp[m], where for p = (oh, ow)
    z[n, k, oh, ow] = sum_{kh, kw} x[n, k // MULT, oh*S_H - pad_h + kh*D_H, ow*S_W - pad_w + kw*D_W] * wd[k, kh, kw] + bd[k].

    A program owns [BLOCK_P pixels x BLOCK_M outputs]. For each BLOCK_K chunk of the C*MULT
    depthwise channels it computes the z tile in registers (ACC), rounds it to the input dtype
    (as the unfused pair would store it) and feeds it straight into tl.dot: z never touches
    global memory. Grid: (N * n_p_blocks * n_m_blocks,), M blocks of one pixel block adjacent.
    """
    n, p, m = output_tile(n_p_blocks, n_m_blocks, BLOCK_P, BLOCK_M, IDX64)
    mask_p = p < OH * OW
    mask_m = m < M
    oh = p // OW
    ow = p % OW
    x_base = x_ptr + n * stride_xn
    acc = tl.zeros([BLOCK_P, BLOCK_M], dtype=ACC)
    for k0 in range(0, CM, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        if IDX64:
            kk = kk.to(tl.int64)
        mask_k = kk < CM
        ci = kk // MULT
        z = tl.zeros([BLOCK_P, BLOCK_K], dtype=ACC)
        # a loop over kernel rows (each row's KW taps unrolled): unrolling every tap keeps
        # too many loads live beside the GEMM accumulator, and spills
        for kh in range(KH):
            z = _dw_tile_row(z, x_base, wd_ptr, ci, kk, mask_k, oh, ow, mask_p, kh, H, W,
                             stride_xc, stride_xh, stride_xw, stride_wdc, stride_wdh,
                             stride_wdw, pad_h, pad_w, KW, STRIDE_H, STRIDE_W, DIL_H, DIL_W,
                             ACC)
        if HAS_DW_BIAS:
            z += tl.load(bd_ptr + kk, mask=mask_k, other=0.0).to(ACC)[None, :]
        wp = tl.load(wp_ptr + kk[:, None] * stride_wpk + m[None, :] * stride_wpm,
                     mask=mask_k[:, None] & mask_m[None, :], other=0.0)
        acc = dot_acc(z.to(wp_ptr.dtype.element_ty), wp, acc, ALLOW_TF32, ACC)
    store_output(acc, bp_ptr, y_ptr, n, p, m, mask_p, mask_m, stride_yn, stride_yp, stride_ym,
                 HAS_PW_BIAS, ACC)
