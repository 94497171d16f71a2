"""``@triton.jit`` helpers shared by the kernels: the tensor-core product, tile decodes, pixel
addressing, the bias + store epilogue, the atomic-or-store of split reductions, and the fused
epilogues (per-channel scale/shift, activation, a layer norm over channels).
"""
import triton
import triton.language as tl

#: depthwise kernels with at most this many taps unroll every tap; larger ones loop over kernel
#: rows and unroll along the row (unrolled, a 5x5 window's weights and columns spill on sm_90)
MAX_UNROLL = tl.constexpr(16)
#: depthwise kernel rows wider than this many taps (1D K33 and up) loop over their tap groups
#: instead of unrolling the row: an unrolled row that wide holds too many loads in flight
#: (spills at 255 registers on sm_80/sm_90) and takes ptxas minutes past K63
ROW_LOOP_TAPS = tl.constexpr(32)


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
    store_output_epilogue(acc, b_ptr, None, None, y_ptr, n, p, m, mask_p, mask_m, stride_yn,
                          stride_yp, stride_ym, HAS_BIAS, False, ACT_IDENTITY, ACC)


@triton.jit
def store_output_epilogue(acc, b_ptr, scale_ptr, shift_ptr, y_ptr, n, p, m, mask_p, mask_m,
                          stride_yn, stride_yp, stride_ym, HAS_BIAS: tl.constexpr,
                          HAS_AFFINE: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr):
    """y[n, m, p] = act((acc[p, m] (+ b[m])) (* scale[m] + shift[m])), cast to y's dtype
    (``output_epilogue``; with HAS_AFFINE off and ACT_IDENTITY it is ``store_output``)."""
    acc = output_epilogue(acc, b_ptr, scale_ptr, shift_ptr, m, mask_m, HAS_BIAS, HAS_AFFINE,
                          ACT, ACC)
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


# activation codes of the fused epilogues (``triton_dsd.epilogue`` maps names to them)
ACT_IDENTITY = tl.constexpr(0)
ACT_RELU = tl.constexpr(1)
ACT_RELU6 = tl.constexpr(2)
ACT_SILU = tl.constexpr(3)
ACT_GELU = tl.constexpr(4)
ACT_GELU_TANH = tl.constexpr(5)
ACT_HARDSWISH = tl.constexpr(6)

# normalisation codes of the fused layer's mid stage (``triton_dsd.epilogue.Epilogue.mid_norm``)
NORM_NONE = tl.constexpr(0)
NORM_LAYER = tl.constexpr(1)


@triton.jit
def activation(v, ACT: tl.constexpr):
    """act(v) elementwise, in v's (accumulator) dtype:
    relu max(v, 0); relu6 min(max(v, 0), 6); silu v*sigmoid(v); gelu v/2*(1 + erf(v/sqrt 2));
    gelu_tanh v/2*(1 + tanh(sqrt(2/pi)*(v + 0.044715 v^3))) = v*sigmoid(2*sqrt(2/pi)*(...));
    hardswish v*min(max(v + 3, 0), 6)/6."""
    if ACT == ACT_RELU:
        v = tl.maximum(v, 0.0)
    elif ACT == ACT_RELU6:
        v = tl.minimum(tl.maximum(v, 0.0), 6.0)
    elif ACT == ACT_SILU:
        v = v * tl.sigmoid(v)
    elif ACT == ACT_GELU:
        v = 0.5 * v * (1.0 + tl.math.erf(v * 0.7071067811865476))
    elif ACT == ACT_GELU_TANH:
        v = v * tl.sigmoid(1.5957691216057308 * (v + 0.044715 * v * v * v))
    elif ACT == ACT_HARDSWISH:
        v = v * (tl.minimum(tl.maximum(v + 3.0, 0.0), 6.0) * (1.0 / 6.0))
    return v


@triton.jit
def channel_epilogue(v, scale_ptr, shift_ptr, idx, mask, HAS_AFFINE: tl.constexpr,
                     ACT: tl.constexpr, ACC: tl.constexpr, AXIS: tl.constexpr):
    """act(v * scale[idx] + shift[idx]) with the channel vector idx along v's axis AXIS (a
    folded batch norm: per-channel scale and shift), in ACC."""
    if HAS_AFFINE:
        s = tl.load(scale_ptr + idx, mask=mask, other=0.0).to(ACC)
        t = tl.load(shift_ptr + idx, mask=mask, other=0.0).to(ACC)
        if AXIS == 0:
            v = v * s[:, None] + t[:, None]
        else:
            v = v * s[None, :] + t[None, :]
    return activation(v, ACT)


@triton.jit
def output_epilogue(acc, b_ptr, scale_ptr, shift_ptr, m, mask_m, HAS_BIAS: tl.constexpr,
                    HAS_AFFINE: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr):
    """act((acc + b[m]) * scale[m] + shift[m]) of a GEMM tile acc [p, m] in ACC: the bias,
    then a folded batch norm and an activation per output channel m (each part optional)."""
    if HAS_BIAS:
        acc += tl.load(b_ptr + m, mask=mask_m, other=0.0).to(ACC)[None, :]
    return channel_epilogue(acc, scale_ptr, shift_ptr, m, mask_m, HAS_AFFINE, ACT, ACC, 1)


@triton.jit
def channel_layer_norm(v, mask, CM, eps, AXIS: tl.constexpr):
    """(v - mean) * rsqrt(var + eps) over the channels of v (its axis AXIS; ``F.layer_norm``
    without its affine), in v's (accumulator) dtype:
    mean = sum_k v[k] / CM, var = sum_k (v[k] - mean)^2 / CM (biased), over the CM real
    channels k, where ``mask`` (the channel vector along AXIS) holds. Padded channel lanes of
    v must be zero (masked loads): they add nothing to the mean, and are masked out of the
    centred squares and of the result (which is zero there)."""
    if AXIS == 0:
        real = mask[:, None]
    else:
        real = mask[None, :]
    mean = tl.sum(v, axis=AXIS) / CM
    centred = tl.where(real, v - tl.expand_dims(mean, AXIS), 0.0)
    var = tl.sum(centred * centred, axis=AXIS) / CM
    return centred * tl.expand_dims(tl.rsqrt(var + eps), AXIS)
