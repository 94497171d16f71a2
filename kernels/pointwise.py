"""Pointwise (1x1) convolution kernels: a GEMM over pixels, and its weight gradient.

Notation: x (N, K, P) and y (N, M, P) are feature maps whose P = H*W pixels are addressed by
strides; w is an (M, K) matrix addressed by strides (a (M, K, 1, 1) conv weight, or its
transpose for the input gradient). channels_last maps give [P, K] x [K, M]; NCHW maps give the
same product with the pixel axis contiguous; Triton lays the tiles out for either. fp16/bf16
operands go to the tensor cores (HMMA / HGMMA) with an fp32 accumulator; fp32 operands use TF32
when ALLOW_TF32 (the launcher follows torch.backends.cudnn.allow_tf32), IEEE fp32 otherwise;
fp64 accumulates in fp64.
"""
import triton
import triton.language as tl

from triton_dsd.kernels._common import (dot_acc, output_tile, pixel_offsets, store_output,
                                        store_partial)


@triton.jit
def pointwise_fwd_kernel(
    x_ptr,  # input x (N, K, P) by strides (pixels through pixel_offsets)
    w_ptr,  # weight w (M, K) by strides
    b_ptr,  # bias (M,), contiguous; None when HAS_BIAS is False
    y_ptr,  # output y (N, M, P) by strides; its pixels always flatten (stride_yp)
    K, M, P, W_PIX, n_p_blocks, n_m_blocks,
    stride_xn, stride_xk, stride_xh, stride_xw,
    stride_wm, stride_wk,
    stride_yn, stride_ym, stride_yp,
    HAS_BIAS: tl.constexpr, PIX_2D: tl.constexpr, ALLOW_TF32: tl.constexpr,
    IDX64: tl.constexpr, ACC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[n, m, p] = sum_k x[n, k, p] * w[m, k] + b[m].

    Also the input gradient of a pointwise conv: dx[n, k, p] = sum_m dy[n, m, p] * W[m, k] is
    this kernel with x = dy and w = W^T (strides swapped). Grid: (N * n_p_blocks * n_m_blocks,),
    the M blocks of one pixel block adjacent so its x tile is reused from L2.
    """
    n, p, m = output_tile(n_p_blocks, n_m_blocks, BLOCK_P, BLOCK_M, IDX64)
    mask_p = p < P
    mask_m = m < M
    x_rows = x_ptr + n * stride_xn + pixel_offsets(p, W_PIX, stride_xh, stride_xw, PIX_2D)
    acc = tl.zeros([BLOCK_P, BLOCK_M], dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        if IDX64:
            k = k.to(tl.int64)
        mask_k = k < K
        a = tl.load(x_rows[:, None] + k[None, :] * stride_xk,
                    mask=mask_p[:, None] & mask_k[None, :], other=0.0)
        b = tl.load(w_ptr + k[:, None] * stride_wk + m[None, :] * stride_wm,
                    mask=mask_k[:, None] & mask_m[None, :], other=0.0)
        acc = dot_acc(a, b, acc, ALLOW_TF32, ACC)
    store_output(acc, b_ptr, y_ptr, n, p, m, mask_p, mask_m, stride_yn, stride_yp, stride_ym,
                 HAS_BIAS, ACC)


@triton.jit
def pointwise_bwd_weight_kernel(
    x_ptr,  # layer input x (N, K, P) by strides (pixels through pixel_offsets)
    dy_ptr,  # output gradient dy (N, M, P) by strides; its pixels flatten (stride_dyp)
    pw_part_ptr,  # dW partial sums (n_splits, M, K), contiguous, ACC dtype
    pb_part_ptr,  # db partial sums (n_splits, M), contiguous, ACC dtype; None unless HAS_BIAS
    K, M, P, W_PIX, n_p_blocks, total_blocks, blocks_per_split, n_k_blocks,
    stride_xn, stride_xk, stride_xh, stride_xw,
    stride_dyn, stride_dym, stride_dyp,
    HAS_BIAS: tl.constexpr, ATOMIC: tl.constexpr, PIX_2D: tl.constexpr,
    ALLOW_TF32: tl.constexpr, IDX64: tl.constexpr, ACC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Split-K over the N*P pixels:

    dW[m, k] = sum_{n, p} dy[n, m, p] * x[n, k, p]        db[m] = sum_{n, p} dy[n, m, p]

    Program ((m, k), s) sums pixel blocks [s*blocks_per_split, (s+1)*blocks_per_split) of the
    flat (n, pixel block) space. ATOMIC: atomic adds into split row 0; otherwise each split
    stores its own row, finished by ``reduce.splitk_reduce_kernel`` in a fixed order. The
    k-block-0 programs also sum db. Grid: (n_m_blocks * n_k_blocks, n_splits).
    """
    pid_mk = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_m = pid_mk // n_k_blocks
    pid_k = pid_mk % n_k_blocks
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    if IDX64:
        m = m.to(tl.int64)
        k = k.to(tl.int64)
    mask_m = m < M
    mask_k = k < K
    acc = tl.zeros([BLOCK_M, BLOCK_K], dtype=ACC)
    # db summed elementwise in the loop and reduced over pixels once at the end (a reduction
    # per block costs a round of shuffles every iteration)
    acc_b = tl.zeros([BLOCK_M, BLOCK_P], dtype=ACC)
    b_start = pid_s * blocks_per_split
    b_end = tl.minimum(b_start + blocks_per_split, total_blocks)
    for blk in range(b_start, b_end):
        n = tl.cast(blk // n_p_blocks, tl.int64)
        pb = blk % n_p_blocks
        if IDX64:  # widen before multiplying: a batch-folded pixel index can pass 2^31
            pb = tl.cast(pb, tl.int64)
        p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
        mask_p = p < P
        dy = tl.load(dy_ptr + n * stride_dyn + m[:, None] * stride_dym + p[None, :] * stride_dyp,
                     mask=mask_m[:, None] & mask_p[None, :], other=0.0)
        xo = pixel_offsets(p, W_PIX, stride_xh, stride_xw, PIX_2D)
        xv = tl.load(x_ptr + n * stride_xn + xo[:, None] + k[None, :] * stride_xk,
                     mask=mask_p[:, None] & mask_k[None, :], other=0.0)
        acc = dot_acc(dy, xv, acc, ALLOW_TF32, ACC)
        if HAS_BIAS:
            acc_b += dy.to(ACC)
    if ATOMIC:
        row = 0
    else:
        row = pid_s
    w_ptrs = pw_part_ptr + tl.cast(row, tl.int64) * M * K + m[:, None] * K + k[None, :]
    store_partial(w_ptrs, acc, mask_m[:, None] & mask_k[None, :], ATOMIC)
    if HAS_BIAS:
        if pid_k == 0:
            store_partial(pb_part_ptr + tl.cast(row, tl.int64) * M + m, tl.sum(acc_b, axis=1),
                          mask_m, ATOMIC)
