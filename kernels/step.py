"""One decode step of the causal separable layer for a batch of streams: the dilated depthwise
tap sum from the conv state, the epilogue between the stages, the pointwise GEMV and the
output epilogue, in one launch; the conv state is updated in place."""
import triton
import triton.language as tl

from triton_dsd.kernels._common import (MAX_UNROLL, channel_epilogue, dot_acc,
                                        output_epilogue)


@triton.jit
def _shift_state(state_ptr, x_ptr, n0, c0, N, C, stride_xn, stride_xc, stride_sn, stride_sc,
                 stride_ss, S: tl.constexpr, IDX64: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_C: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_S: tl.constexpr):
    """state[n, c, s] = state[n, c, s + 1] for s < S - 1, then state[n, c, S - 1] = x_t[n, c],
    in place, for the streams n0.. and channels c0.. of a [BLOCK_N, BLOCK_C] block: its real
    rows (n, c) flattened, BLOCK_ROWS rows x BLOCK_S frames at a time with the frames fastest
    (coalesced row segments); each tile read by every thread (a barrier) before it is written
    one frame lower (tiles of other rows, or later frames, do not overlap it)."""
    n_rows = tl.minimum(N - n0, BLOCK_N) * BLOCK_C
    for r0 in tl.range(0, n_rows, BLOCK_ROWS, loop_unroll_factor=1):
        r = r0 + tl.arange(0, BLOCK_ROWS)
        n = (n0 + r // BLOCK_C).to(tl.int64)
        c = c0 + r % BLOCK_C
        if IDX64:
            c = c.to(tl.int64)
        ok = (r < n_rows) & (c < C)
        rows = state_ptr + n * stride_sn + c * stride_sc
        for s0 in tl.range(0, S - 1, BLOCK_S, loop_unroll_factor=1):
            s = s0 + tl.arange(0, BLOCK_S)
            m = ok[:, None] & (s < S - 1)[None, :]
            v = tl.load(rows[:, None] + (s + 1)[None, :] * stride_ss, mask=m)
            tl.debug_barrier()
            tl.store(rows[:, None] + s[None, :] * stride_ss, v, mask=m)
        xt = tl.load(x_ptr + n * stride_xn + c * stride_xc, mask=ok)
        tl.debug_barrier()
        tl.store(rows + (S - 1) * stride_ss, xt.to(state_ptr.dtype.element_ty), mask=ok)


@triton.jit
def dsd_step_kernel(
        x_ptr,  # x_t [N, C]: this frame of every stream
        state_ptr,  # conv state [N, C, S]: the last S = DIL*(K-1) input frames, oldest first
        wd_ptr,  # depthwise weight: tap k of channel j at j*stride_wdc + k*stride_wdk
        bd_ptr,  # depthwise bias [C*MULT] (HAS_DW_BIAS)
        mid_scale_ptr,  # per-channel scale between the stages [C*MULT] (HAS_MID_AFFINE)
        mid_shift_ptr,  # per-channel shift between the stages [C*MULT] (HAS_MID_AFFINE)
        wp_ptr,  # pointwise weight [M, C*MULT]
        bp_ptr,  # pointwise bias [M] (HAS_PW_BIAS)
        out_scale_ptr,  # per-channel output scale [M] (HAS_OUT_AFFINE)
        out_shift_ptr,  # per-channel output shift [M] (HAS_OUT_AFFINE)
        y_ptr,  # y_t [N, M]
        part_ptr,  # ACC partial sums of y (SPLIT_C): ATOMIC [N, M], else [n_cb, N, M]
        count_ptr,  # int32 counters (zero between launches): [n_nb, n_cb] state readers,
        # then [n_nb, n_mb] channel blocks summed into each y tile
        N, C, M, n_cb, n_mb, mb_per_split,
        stride_xn, stride_xc, stride_sn, stride_sc, stride_ss, stride_wdc, stride_wdk,
        stride_wpm, stride_wpk, stride_yn, stride_ym,
        K: tl.constexpr, DIL: tl.constexpr, MULT: tl.constexpr,
        HAS_DW_BIAS: tl.constexpr, HAS_MID_AFFINE: tl.constexpr, MID_ACT: tl.constexpr,
        HAS_PW_BIAS: tl.constexpr, HAS_OUT_AFFINE: tl.constexpr, OUT_ACT: tl.constexpr,
        SPLIT_C: tl.constexpr, ATOMIC: tl.constexpr, M_SPLITS: tl.constexpr,
        ALLOW_TF32: tl.constexpr, IDX64: tl.constexpr, ACC: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_ROWS: tl.constexpr, BLOCK_S: tl.constexpr):
    """y_t = act_out((act_mid(u * s_mid + t_mid) @ wp^T + bp) * s_out + t_out) for one frame
    x_t of N streams, with the causal dilated depthwise output

        u[n, j] = sum_{k < K-1} wd[j, k] * state[n, j // MULT, k*DIL]
                  + wd[j, K-1] * x_t[n, j // MULT] + bd[j]

    (tap k reads the frame (K-1-k)*DIL steps back: state slot k*DIL of the S = DIL*(K-1) last
    frames, oldest first); then the state moves one frame: state[n, c, :] <-
    (state[n, c, 1:], x_t[n, c]).

    Program (cb, split, nb): input channels cb*BLOCK_C.. (their MULT depthwise channels) of
    streams nb*BLOCK_N.., and the M blocks of its split. u is cast to x's dtype (as eager
    rounds the depthwise output) for the tensor-core product. With several channel blocks
    (SPLIT_C) each adds its share of every y tile into ``part`` (ATOMIC: atomically into one
    ACC row block, read back and zeroed by the last; else its own rows, summed in channel
    block order: deterministic), and the last channel block to arrive at a tile (a counter,
    acquire/release) applies the bias and the output epilogue and writes it, then zeroes the
    counter. The state rows of a channel block are read by its M_SPLITS programs; the last
    reader to arrive (a counter) shifts them (``_shift_state``: BLOCK_ROWS rows x BLOCK_S
    frames a tile), so no program reads a frame after it moved.
    """
    pid_c = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_n = tl.program_id(2)
    S: tl.constexpr = DIL * (K - 1)
    n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    if IDX64:  # a channel or frame offset may pass 2^31 (an odd-strided state)
        c = c.to(tl.int64)
    mask_n = n < N
    mask_c = c < C
    mask = mask_n[:, None] & mask_c[None, :]
    xt = tl.load(x_ptr + n[:, None] * stride_xn + c[None, :] * stride_xc, mask=mask,
                 other=0.0)
    s_rows = state_ptr + n[:, None] * stride_sn + c[None, :] * stride_sc

    # u for each of the MULT depthwise channels of c, cast for the product, padding lanes 0
    us = ()
    for r in tl.static_range(MULT):
        j = c * MULT + r
        w_j = wd_ptr + j * stride_wdc
        u = tl.zeros([BLOCK_N, BLOCK_C], dtype=ACC)
        if S > 0:
            if K - 1 <= MAX_UNROLL:
                for k in tl.static_range(K - 1):
                    sv = tl.load(s_rows + (k * DIL) * stride_ss, mask=mask, other=0.0)
                    wv = tl.load(w_j + k * stride_wdk, mask=mask_c, other=0.0)
                    u += sv.to(ACC) * wv.to(ACC)[None, :]
            else:
                for k in tl.range(0, K - 1, loop_unroll_factor=1):
                    sv = tl.load(s_rows + (k * DIL) * stride_ss, mask=mask, other=0.0)
                    wv = tl.load(w_j + k * stride_wdk, mask=mask_c, other=0.0)
                    u += sv.to(ACC) * wv.to(ACC)[None, :]
        u += xt.to(ACC) * tl.load(w_j + (K - 1) * stride_wdk, mask=mask_c,
                                  other=0.0).to(ACC)[None, :]
        if HAS_DW_BIAS:
            u += tl.load(bd_ptr + j, mask=mask_c, other=0.0).to(ACC)[None, :]
        u = channel_epilogue(u, mid_scale_ptr, mid_shift_ptr, j, mask_c, HAS_MID_AFFINE,
                             MID_ACT, ACC, 1)
        us = us + (tl.where(mask, u, 0.0).to(x_ptr.dtype.element_ty),)

    # the state moves one frame, once every program of this channel block has read it
    if S > 0:
        tl.debug_barrier()
        if M_SPLITS == 1:
            _shift_state(state_ptr, x_ptr, pid_n * BLOCK_N, pid_c * BLOCK_C, N, C, stride_xn,
                         stride_xc, stride_sn, stride_sc, stride_ss, S, IDX64, BLOCK_N,
                         BLOCK_C, BLOCK_ROWS, BLOCK_S)
        else:
            readers = tl.atomic_add(count_ptr + pid_n * n_cb + pid_c, 1, sem="acq_rel")
            if readers == M_SPLITS - 1:
                _shift_state(state_ptr, x_ptr, pid_n * BLOCK_N, pid_c * BLOCK_C, N, C,
                             stride_xn, stride_xc, stride_sn, stride_sc, stride_ss, S, IDX64,
                             BLOCK_N, BLOCK_C, BLOCK_ROWS, BLOCK_S)
                tl.store(count_ptr + pid_n * n_cb + pid_c, 0)

    # the pointwise GEMV of this channel block for the M blocks of this split
    counters = count_ptr + tl.cdiv(N, BLOCK_N) * n_cb + pid_n * n_mb
    mb_end = tl.minimum(pid_s * mb_per_split + mb_per_split, n_mb)
    for mb in tl.range(pid_s * mb_per_split, mb_end, loop_unroll_factor=1):
        m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = m < M
        mask_y = mask_n[:, None] & mask_m[None, :]
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=ACC)
        for r in tl.static_range(MULT):
            j = c * MULT + r
            wp = tl.load(wp_ptr + m[None, :] * stride_wpm + j[:, None] * stride_wpk,
                         mask=mask_c[:, None] & mask_m[None, :], other=0.0)
            acc = dot_acc(us[r], wp, acc, ALLOW_TF32, ACC)
        if SPLIT_C:
            if ATOMIC:
                part = part_ptr + n[:, None] * M + m[None, :]
                tl.atomic_add(part, acc, mask=mask_y, sem="relaxed")
            else:
                part = part_ptr + (pid_c * N + n[:, None]) * M + m[None, :]
                tl.store(part, acc, mask=mask_y)
            tl.debug_barrier()
            arrived = tl.atomic_add(counters + mb, 1, sem="acq_rel")
            if arrived == n_cb - 1:  # the last channel block at this tile: finish it
                if ATOMIC:  # read where the atomics summed (L2), then zero for the next
                    zero = tl.zeros([BLOCK_N, BLOCK_M], dtype=ACC)
                    acc = tl.where(mask_y, tl.atomic_add(part, zero, mask=mask_y,
                                                         sem="relaxed"), 0.0)
                    tl.store(part, zero, mask=mask_y)
                else:
                    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=ACC)
                    for cb in range(0, n_cb):
                        acc += tl.load(part_ptr + (cb * N + n[:, None]) * M + m[None, :],
                                       mask=mask_y, other=0.0, cache_modifier=".cg")
                acc = output_epilogue(acc, bp_ptr, out_scale_ptr, out_shift_ptr, m, mask_m,
                                      HAS_PW_BIAS, HAS_OUT_AFFINE, OUT_ACT, ACC)
                tl.store(y_ptr + n[:, None] * stride_yn + m[None, :] * stride_ym,
                         acc.to(y_ptr.dtype.element_ty), mask=mask_y)
                tl.store(counters + mb, 0)
        else:
            acc = output_epilogue(acc, bp_ptr, out_scale_ptr, out_shift_ptr, m, mask_m,
                                  HAS_PW_BIAS, HAS_OUT_AFFINE, OUT_ACT, ACC)
            tl.store(y_ptr + n[:, None] * stride_yn + m[None, :] * stride_ym,
                     acc.to(y_ptr.dtype.element_ty), mask=mask_y)
