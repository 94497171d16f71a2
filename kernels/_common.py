"""``@triton.jit`` helpers shared by the kernels: the tensor-core product, tile decodes, pixel
addressing, the bias + store epilogue and the atomic-or-store of split reductions.
"""
import triton
import triton.language as tl

#: depthwise kernels with at most this many taps unroll every tap; larger ones loop over kernel
#: rows and unroll along the row (unrolled, a 5x5 window's weights and columns spill on sm_90)
MAX_UNROLL = tl.constexpr(16)


@triton.jit
def dot_acc(a, b, acc, ALLOW_TF32: tl.constexpr, ACC: tl.constexpr):
    """acc + a @ b with an ACC accumulator (out_dtype explicit: Triton 3.6 defaults it to fp32
    even for fp64 operands); TF32 only where allowed (it matters only for fp32 operands)."""
    if ALLOW_TF32:
        return tl.dot(a, b, acc, input_precision="tf32", out_dtype=ACC)
    else:
        return tl.dot(a, b, acc, input_precision="ieee", out_dtype=ACC)


@triton.jit
def output_tile(n_p_blocks, n_m_blocks, BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr,
                IDX64: tl.constexpr):
    """(n, pixel vector p, output-channel vector m) of this program in a flat GEMM grid
    (N * n_p_blocks * n_m_blocks,) whose M blocks of one pixel block are adjacent (x reuse)."""
    pid = tl.program_id(0)
    pid_m = pid % n_m_blocks
    rest = pid // n_m_blocks
    pid_p = rest % n_p_blocks
    n = tl.cast(rest // n_p_blocks, tl.int64)
    if IDX64:  # widen before multiplying: a batch-folded pixel index can pass 2^31
        pid_p = tl.cast(pid_p, tl.int64)
        pid_m = tl.cast(pid_m, tl.int64)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    return n, p, m


@triton.jit
def pixel_offsets(p, W_PIX, stride_h, stride_w, PIX_2D: tl.constexpr):
    """Element offsets of flat pixel indices p: p*stride_w, or (p // W)*stride_h + (p % W)*stride_w
    for views whose (H, W) axes cannot be flattened into one stride."""
    if PIX_2D:
        return (p // W_PIX) * stride_h + (p % W_PIX) * stride_w
    else:
        return p * stride_w


@triton.jit
def store_output(acc, b_ptr, y_ptr, n, p, m, mask_p, mask_m, stride_yn, stride_yp, stride_ym,
                 HAS_BIAS: tl.constexpr, ACC: tl.constexpr):
    """y[n, m, p] = acc[p, m] (+ b[m]), cast to y's dtype."""
    if HAS_BIAS:
        acc += tl.load(b_ptr + m, mask=mask_m, other=0.0).to(ACC)[None, :]
    y_ptrs = y_ptr + n * stride_yn + p[:, None] * stride_yp + m[None, :] * stride_ym
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_m[None, :])


@triton.jit
def store_partial(ptrs, value, mask, ATOMIC: tl.constexpr):
    """A split reduction's partial sum: atomically added into one shared row (ATOMIC), or
    stored into this split's own row (summed later in a fixed order)."""
    if ATOMIC:
        tl.atomic_add(ptrs, value, mask=mask)
    else:
        tl.store(ptrs, value, mask=mask)
