"""Split-reduction finish: sum per-split partial sums in a fixed order and cast."""
import triton
import triton.language as tl


@triton.jit
def splitk_reduce_kernel(
    part_ptr,  # partial sums part[s, r, c] (n_splits, R, C), any strides, accumulator dtype
    out_ptr,  # result out[r, c] (R, C), any strides, the gradient's dtype
    n_splits, R, C, n_c_blocks,
    stride_ps, stride_pr, stride_pc,
    stride_or, stride_oc,
    ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """out[r, c] = sum_{s = 0 .. n_splits-1} part[s, r, c], summed in increasing s (so the
    result is bit-identical run to run), then cast to out's dtype.
    Grid: (cdiv(R, BLOCK_R) * n_c_blocks,).
    """
    pid = tl.program_id(0)
    r = (pid // n_c_blocks) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = (pid % n_c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (r < R)[:, None] & (c < C)[None, :]
    ptrs = part_ptr + r[:, None] * stride_pr + c[None, :] * stride_pc
    acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=ACC)
    for _ in range(n_splits):
        acc += tl.load(ptrs, mask=mask, other=0.0).to(ACC)
        ptrs += stride_ps
    tl.store(out_ptr + r[:, None] * stride_or + c[None, :] * stride_oc,
             acc.to(out_ptr.dtype.element_ty), mask=mask)
