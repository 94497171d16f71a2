"""Dilated depthwise convolution kernels: forward and input gradient (the weight gradient is in
``depthwise_wgrad.py``).

Notation (one kernel family for 1D and 2D: 1D is 2D with H = OH = KH = 1)::

    x  (N, C_in,  H,  W)      input, any strides (NCHW, channels_last, sliced views)
    w  (C_out, 1, KH, KW)     weight, C_out = C_in * MULT (depth multiplier), read through a
                              (tap, channel) stride pair: tap t = kh*KW + kw
    y  (N, C_out, OH, OW)     output
    ih = oh * STRIDE_H - pad_h + kh * DIL_H      iw = ow * STRIDE_W - pad_w + kw * DIL_W
    input channel of output channel co:  ci = co // MULT

Both kernels compute register windows along W. A program owns BLOCK_R output row segments
(each BLOCK_W consecutive outputs of one row of one image) for BLOCK_C channels: tensors are
[BLOCK_R, BLOCK_C] and the BLOCK_W outputs of a segment are BLOCK_W separate accumulators (a
tuple: BLOCK_W is an unroll count, not a tensor dimension). Each input column a segment needs
is loaded and converted ONCE per kernel row and multiplied into every output of the segment
that uses it, so one load serves up to KW taps (a register sliding window). With channels_last
strides the channel axis is contiguous (16-byte loads); with NCHW strides each thread walks its
own segments with the halo in registers. Weights are loaded once per program and kernel row,
TAP_GROUP taps at a time (the registers they take bound the group).

Loads are upcast to the accumulator dtype ACC (fp32, or fp64 for fp64 tensors), accumulated in
ACC and cast on store. Out-of-range taps (the zero padding; an asymmetric bottom/right pad is
implied by the bounds) are masked loads of zero. Kernels with more than MAX_UNROLL taps loop
over kernel rows, skipping rows that lie wholly in the padding of every row of the program;
rows of more than ROW_LOOP_TAPS taps (1D K33 and up) loop over their tap groups too, in tap
order (the same sums as unrolled); scalar columns (NCHW / NCL) slide their window along that
loop, loading only the columns a group does not share with the previous one.
When IDX64 is set every element offset is computed in int64; the batch offset always is.
"""
import triton
import triton.language as tl

from triton_dsd.kernels._common import MAX_UNROLL, ROW_LOOP_TAPS

#: taps whose weights are held in registers at once (per kernel row; half past 2*TAP_GROUP taps)
TAP_GROUP = tl.constexpr(8)


@triton.jit
def _segments(block, n_rows, n_img_rows, OUT_H, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
              IDX64: tl.constexpr):
    """Row segments block*BLOCK_R .. +BLOCK_R of the flat (segment, n, out row) space (the
    segment slowest, so a program's rows mostly share their columns):
    (n (int64), out row, first out column, valid)."""
    r = block * BLOCK_R + tl.arange(0, BLOCK_R)
    valid = r < n_rows
    seg = r // n_img_rows
    t = r % n_img_rows
    oh = t % OUT_H
    n = (t // OUT_H).to(tl.int64)
    if IDX64:
        oh = oh.to(tl.int64)
        seg = seg.to(tl.int64)
    return n, oh, seg * BLOCK_W, valid


@triton.jit
def _hits(o, g0, GROUP: tl.constexpr, KW: tl.constexpr, BLOCK_W: tl.constexpr,
          STRIDE_W: tl.constexpr, DIL_W: tl.constexpr, TRANSPOSED: tl.constexpr,
          PHASE_W: tl.constexpr):
    """How many (output j, tap kw) pairs of tap group g0 read source column o (compile time)."""
    hits = ()
    for jj in tl.static_range(BLOCK_W):
        for kw in tl.static_range(g0, g0 + GROUP):
            if TRANSPOSED:
                if kw < KW and o * STRIDE_W - PHASE_W + kw * DIL_W == jj:
                    hits = hits + (kw,)
            else:
                if kw < KW and o == jj * STRIDE_W + kw * DIL_W:
                    hits = hits + (kw,)
    return len(hits)


@triton.jit
def _load_column(src_cols, row_ok, mask_c, col0, W_SRC, stride_sw, o, EVEN_C: tl.constexpr,
                 ACC: tl.constexpr):
    """Source column col0 + o of every row, in ACC: masked to 0 <= col < W_SRC with one
    unsigned compare."""
    UINT: tl.constexpr = tl.uint64 if col0.dtype == tl.int64 else tl.uint32
    mask = (row_ok & ((col0 + o).to(UINT) < W_SRC.to(UINT)))[:, None]
    if not EVEN_C:
        mask = mask & mask_c[None, :]
    return tl.load(src_cols + o * stride_sw, mask=mask, other=0.0).to(ACC)


@triton.jit
def _use_column(acc, wts, xv, o, g0, GROUP: tl.constexpr, KW: tl.constexpr,
                BLOCK_W: tl.constexpr, STRIDE_W: tl.constexpr, DIL_W: tl.constexpr,
                TRANSPOSED: tl.constexpr, PHASE_W: tl.constexpr):
    """Add source column o (xv), times the tap's weight, into every output j of the segment
    that reads it."""
    new = ()
    for jj in tl.static_range(BLOCK_W):
        a = acc[jj]
        for kw in tl.static_range(g0, g0 + GROUP):
            if TRANSPOSED:
                if kw < KW and o * STRIDE_W - PHASE_W + kw * DIL_W == jj:
                    a = a + xv * wts[kw - g0][None, :]
            else:
                if kw < KW and o == jj * STRIDE_W + kw * DIL_W:
                    a = a + xv * wts[kw - g0][None, :]
        new = new + (a,)
    return new


@triton.jit
def _column(acc, wts, src_cols, row_ok, mask_c, col0, W_SRC, stride_sw, o, g0,
            GROUP: tl.constexpr, KW: tl.constexpr, BLOCK_W: tl.constexpr,
            STRIDE_W: tl.constexpr, DIL_W: tl.constexpr, TRANSPOSED: tl.constexpr,
            PHASE_W: tl.constexpr, EVEN_C: tl.constexpr, ACC: tl.constexpr):
    """Load source column col0 + o once (``_load_column``) and add it, times the tap's
    weight, into every output j of the segment that reads it."""
    xv = _load_column(src_cols, row_ok, mask_c, col0, W_SRC, stride_sw, o, EVEN_C, ACC)
    return _use_column(acc, wts, xv, o, g0, GROUP, KW, BLOCK_W, STRIDE_W, DIL_W, TRANSPOSED,
                       PHASE_W)


@triton.jit
def _group_weights(w_g, mask_c, stride_wt, GROUP: tl.constexpr, EVEN_C: tl.constexpr,
                   ACC: tl.constexpr):
    """The weights of GROUP consecutive taps from w_g (tap kw at w_g + kw*stride_wt), in ACC:
    one [BLOCK_C] vector a tap."""
    wts = ()
    for kw in tl.static_range(GROUP):
        if EVEN_C:
            wts = wts + (tl.load(w_g + kw * stride_wt).to(ACC),)
        else:
            wts = wts + (tl.load(w_g + kw * stride_wt, mask=mask_c, other=0.0).to(ACC),)
    return wts


@triton.jit
def _group_columns(acc, wts, g_cols, row_ok, mask_c, g_col0, col_lo, col_hi, shift, W_SRC,
                   stride_sw, GROUP: tl.constexpr, BLOCK_W: tl.constexpr,
                   STRIDE_W: tl.constexpr, DIL_W: tl.constexpr, TRANSPOSED: tl.constexpr,
                   PHASE_W: tl.constexpr, CLIP_W: tl.constexpr, EVEN_C: tl.constexpr,
                   ACC: tl.constexpr):
    """One tap group of a looped row (``_window_row``), weights wts: its GROUP taps as taps
    0.. of a row whose source columns start at g_col0 (pointers g_cols; col0 shifted by
    `shift`), each column loaded once (CLIP_W: skipped where it lies in the padding for every
    row of the program, whose col0 span [col_lo, col_hi])."""
    for o in tl.static_range(
            TRANSPOSED * ((PHASE_W - (GROUP - 1) * DIL_W) // STRIDE_W),
            TRANSPOSED * ((BLOCK_W - 1 + PHASE_W) // STRIDE_W)
            + (1 - TRANSPOSED) * ((BLOCK_W - 1) * STRIDE_W + (GROUP - 1) * DIL_W) + 1):
        if _hits(o, 0, GROUP, GROUP, BLOCK_W, STRIDE_W, DIL_W, TRANSPOSED, PHASE_W) > 0:
            if CLIP_W:
                if (col_hi + shift + o >= 0) & (col_lo + shift + o < W_SRC):
                    acc = _column(acc, wts, g_cols, row_ok, mask_c, g_col0, W_SRC, stride_sw,
                                  o, 0, GROUP, GROUP, BLOCK_W, STRIDE_W, DIL_W, TRANSPOSED,
                                  PHASE_W, EVEN_C, ACC)
            else:
                acc = _column(acc, wts, g_cols, row_ok, mask_c, g_col0, W_SRC, stride_sw, o, 0,
                              GROUP, GROUP, BLOCK_W, STRIDE_W, DIL_W, TRANSPOSED, PHASE_W,
                              EVEN_C, ACC)
    return acc


@triton.jit
def _window_row(acc, src_rows, row_ok, w_ptr, wc, mask_c, kh, col0, col_lo, col_hi, W_SRC,
                stride_sw, stride_wt, stride_wc, KW: tl.constexpr, BLOCK_W: tl.constexpr,
                STRIDE_W: tl.constexpr, DIL_W: tl.constexpr, TRANSPOSED: tl.constexpr,
                PHASE_W: tl.constexpr, CLIP_W: tl.constexpr, EVEN_C: tl.constexpr,
                ACC: tl.constexpr):
    """acc[j] += sum_kw src[row, col0 + o(j, kw)] * w[wc, kh, kw] for one kernel row, each
    source column loaded once (src_rows: [BLOCK_R, BLOCK_C] pointers to column 0 of the rows;
    row_ok: [BLOCK_R], the rows to read).

    Forward: o(j, kw) = j*STRIDE_W + kw*DIL_W. Transposed (the input gradient): o(j, kw) =
    (j + PHASE_W - kw*DIL_W) / STRIDE_W for the taps where that divides evenly.
    CLIP_W: skip (one uniform branch) a column that lies in the padding for every row of the
    program, whose first columns col0 span [col_lo, col_hi].
    Rows of more than ROW_LOOP_TAPS taps loop over their whole tap groups, in tap order (the
    rest of the row unrolls after them): GROUP = TAP_GROUP // 2 taps of vector columns
    (channels_last, wc a channel vector), TAP_GROUP of scalar columns (wc one channel: NCHW /
    NCL), whose window slides along the loop at stride 1 (each group loads only the columns
    it does not share with the previous one). The input gradient loops only where a group
    moves its columns by a whole number of dy columns ((GROUP*DIL_W) % STRIDE_W == 0).
    """
    # half the group for very wide rows: their windows already hold many columns. A looped
    # row's group (below) holds one group's columns: TAP_GROUP taps of scalar columns (wc one
    # channel: NCHW / NCL), half as many of channel vectors
    SCALAR: tl.constexpr = wc.shape[0] == 1
    GROUP: tl.constexpr = (TAP_GROUP // (1 + (KW > 2 * TAP_GROUP)) if KW <= ROW_LOOP_TAPS
                           else TAP_GROUP // (2 - SCALAR))
    # the rows' pointers at source column col0: each column is a constant offset from them
    src_cols = src_rows + col0[:, None] * stride_sw
    # rows of more than ROW_LOOP_TAPS taps walk their whole tap groups in a loop (below); the
    # rest, and every other row, unroll
    LOOP_GROUPS: tl.constexpr = (KW // GROUP) * (KW > ROW_LOOP_TAPS and (
        TRANSPOSED == 0 or (GROUP * DIL_W) % STRIDE_W == 0))
    if LOOP_GROUPS > 0:
        # group g (taps g*GROUP .. + GROUP - 1) is group 0 of a row whose source columns are
        # shifted by g*STEP (forward; the input gradient's move left, by -g*STEP): which of
        # its columns each tap reads is known when compiling
        STEP: tl.constexpr = (GROUP * DIL_W) // STRIDE_W if TRANSPOSED else GROUP * DIL_W
        # the first and last source column a group reads, relative to its shift
        O_FIRST: tl.constexpr = TRANSPOSED * ((PHASE_W - (GROUP - 1) * DIL_W) // STRIDE_W)
        O_LAST: tl.constexpr = (TRANSPOSED * ((BLOCK_W - 1 + PHASE_W) // STRIDE_W)
                                + (1 - TRANSPOSED) * ((BLOCK_W - 1) * STRIDE_W
                                                      + (GROUP - 1) * DIL_W))
        # scalar columns at stride 1 with a segment wider than the dilation: every column
        # between a group's first and last is read, and a group's columns are the previous
        # one's moved by STEP (KEEP of them read by both): a sliding window. (Channel vectors
        # take 4-8 registers a kept column: their windows do not slide.)
        SLIDE: tl.constexpr = SCALAR and STRIDE_W == 1 and BLOCK_W > DIL_W
        KEEP: tl.constexpr = O_LAST - O_FIRST + 1 - STEP
        w_row = w_ptr + kh * KW * stride_wt + wc * stride_wc
        # the loop walks a group's column pointers, weight pointers and column shift
        # (loop-carried: nothing per column is hoisted out of the loop and held across it)
        if TRANSPOSED:
            col_step = -STEP
        else:
            col_step = STEP
        cols = src_cols
        shift = tl.full([], 0, col0.dtype)
        w_g = w_row
        if SLIDE:
            # the columns a group shares with the next stay in registers (KEEP of them), each
            # iteration loads only its STEP new ones
            keep = ()
            for i in tl.static_range(KEEP):
                keep = keep + (_load_column(cols, row_ok, mask_c, col0, W_SRC, stride_sw,
                                            O_FIRST + TRANSPOSED * STEP + i, EVEN_C, ACC),)
            for _g in tl.range(0, LOOP_GROUPS, loop_unroll_factor=1):
                wts = _group_weights(w_g, mask_c, stride_wt, GROUP, EVEN_C, ACC)
                # the group's columns O_FIRST.. in order: the kept ones and the new ones
                # (forward: after the kept; the input gradient's: before them)
                fresh = ()
                for i in tl.static_range(STEP):
                    fresh = fresh + (_load_column(cols, row_ok, mask_c, col0 + shift, W_SRC,
                                                  stride_sw, O_FIRST + (1 - TRANSPOSED) * KEEP + i,
                                                  EVEN_C, ACC),)
                if TRANSPOSED:
                    win = fresh + keep
                else:
                    win = keep + fresh
                for i in tl.static_range(KEEP + STEP):
                    acc = _use_column(acc, wts, win[i], O_FIRST + i, 0, GROUP, GROUP, BLOCK_W,
                                      STRIDE_W, DIL_W, TRANSPOSED, PHASE_W)
                keep = ()
                for i in tl.static_range(KEEP):
                    keep = keep + (win[(1 - TRANSPOSED) * STEP + i],)
                cols += col_step * stride_sw
                shift += col_step
                w_g += GROUP * stride_wt
        else:  # each group loads each of its columns once
            for _g in tl.range(0, LOOP_GROUPS, loop_unroll_factor=1):
                wts = _group_weights(w_g, mask_c, stride_wt, GROUP, EVEN_C, ACC)
                acc = _group_columns(acc, wts, cols, row_ok, mask_c, col0 + shift, col_lo,
                                     col_hi, shift, W_SRC, stride_sw, GROUP, BLOCK_W, STRIDE_W,
                                     DIL_W, TRANSPOSED, PHASE_W, CLIP_W, EVEN_C, ACC)
                cols += col_step * stride_sw
                shift += col_step
                w_g += GROUP * stride_wt
    # the remaining taps (all of them below ROW_LOOP_TAPS), unrolled
    for g0 in tl.static_range(LOOP_GROUPS * GROUP, KW, GROUP):
        # taps g0 .. g0 + GROUP - 1 (those < KW): their weights, one [BLOCK_C] vector a tap
        wts = ()
        for kw in tl.static_range(g0, g0 + GROUP):
            if kw < KW:
                w_ptrs = w_ptr + (kh * KW + kw) * stride_wt + wc * stride_wc
                if EVEN_C:
                    wts = wts + (tl.load(w_ptrs).to(ACC),)
                else:
                    wts = wts + (tl.load(w_ptrs, mask=mask_c, other=0.0).to(ACC),)
        # the source columns this group reads (a superset; unread ones are skipped)
        for o in tl.static_range(
                TRANSPOSED * ((PHASE_W - (g0 + GROUP - 1) * DIL_W) // STRIDE_W)
                + (1 - TRANSPOSED) * (g0 * DIL_W),
                TRANSPOSED * ((BLOCK_W - 1 + PHASE_W - g0 * DIL_W) // STRIDE_W)
                + (1 - TRANSPOSED) * ((BLOCK_W - 1) * STRIDE_W + (g0 + GROUP - 1) * DIL_W) + 1):
            if _hits(o, g0, GROUP, KW, BLOCK_W, STRIDE_W, DIL_W, TRANSPOSED, PHASE_W) > 0:
                if CLIP_W:
                    if (col_hi + o >= 0) & (col_lo + o < W_SRC):
                        acc = _column(acc, wts, src_cols, row_ok, mask_c, col0, W_SRC,
                                      stride_sw, o, g0, GROUP, KW, BLOCK_W, STRIDE_W, DIL_W,
                                      TRANSPOSED, PHASE_W, EVEN_C, ACC)
                else:
                    acc = _column(acc, wts, src_cols, row_ok, mask_c, col0, W_SRC, stride_sw, o,
                                  g0, GROUP, KW, BLOCK_W, STRIDE_W, DIL_W, TRANSPOSED, PHASE_W,
                                  EVEN_C, ACC)
    return acc


@triton.jit
def _zeros(BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr,
           ACC: tl.constexpr):
    acc = ()
    for _j in tl.static_range(BLOCK_W):
        acc = acc + (tl.zeros([BLOCK_R, BLOCK_C], dtype=ACC),)
    return acc


@triton.jit
def _store_window(acc, dst_rows, mask_rows, col0, W_DST, stride_dw, BLOCK_W: tl.constexpr,
                  EVEN_W: tl.constexpr):
    """dst[row, col0 + j] = acc[j] for the columns inside the output (EVEN_W: BLOCK_W divides
    the output width, so every column of a segment is)."""
    dst_cols = dst_rows + col0[:, None] * stride_dw
    for j in tl.static_range(BLOCK_W):
        if EVEN_W:
            mask = mask_rows
        else:
            mask = mask_rows & (col0 + j < W_DST)[:, None]
        tl.store(dst_cols + j * stride_dw, acc[j].to(dst_rows.dtype.element_ty), mask=mask)


@triton.jit
def depthwise_fwd_kernel(
    x_ptr,  # input x (N, C_in, H, W), any strides
    w_ptr,  # weight, tap t of channel c at t*stride_wt + c*stride_wc
    b_ptr,  # bias (C_out,), contiguous; None when HAS_BIAS is False
    y_ptr,  # output y (N, C_out, OH, OW), any strides
    C_out, H, W, OH, OW, n_rows, n_img_rows, n_c_blocks,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_wt, stride_wc,
    stride_yn, stride_yc, stride_yh, stride_yw,
    pad_h, pad_w,
    KH: tl.constexpr, KW: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    DIL_H: tl.constexpr, DIL_W: tl.constexpr,
    MULT: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_C: tl.constexpr, EVEN_W: tl.constexpr,
    IDX64: tl.constexpr, ACC: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """y[n, co, oh, ow] = sum_{kh, kw} x[n, co // MULT, ih, iw] * w[co, 0, kh, kw] + b[co].

    A program computes BLOCK_R row segments of BLOCK_W outputs for BLOCK_C channels (register
    windows along W, see the module docstring). EVEN_C: C_out is a multiple of BLOCK_C;
    EVEN_W: OW is a multiple of BLOCK_W.
    Grid: (cdiv(n_rows, BLOCK_R) * n_c_blocks,), n_rows = segments x N*OH (n_img_rows), channel
    blocks of one row block adjacent.
    """
    pid = tl.program_id(0)
    n, oh, ow0, valid = _segments(pid // n_c_blocks, n_rows, n_img_rows, OH, BLOCK_R, BLOCK_W,
                                  IDX64)
    co = (pid % n_c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    if IDX64:
        co = co.to(tl.int64)
    mask_c = co < C_out
    x_base = x_ptr + (n * stride_xn)[:, None] + ((co // MULT) * stride_xc)[None, :]
    col0 = ow0 * STRIDE_W - pad_w
    acc = _zeros(BLOCK_R, BLOCK_C, BLOCK_W, ACC)
    if KH * KW <= MAX_UNROLL:
        for kh in tl.static_range(KH):
            ih = oh * STRIDE_H - pad_h + kh * DIL_H
            row_ok = valid & (ih >= 0) & (ih < H)
            acc = _window_row(acc, x_base + (ih * stride_xh)[:, None], row_ok, w_ptr, co,
                              mask_c, kh, col0, 0, 0, W, stride_xw, stride_wt, stride_wc, KW,
                              BLOCK_W, STRIDE_W, DIL_W, False, 0, False, EVEN_C, ACC)
    else:
        # large kernels skip the taps that lie in the padding for every row of the program:
        # the kernel rows outside [kh_lo, kh_hi), and, for rows wider than 2*TAP_GROUP taps,
        # such columns (a uniform branch each)
        oh_first = tl.min(tl.where(valid, oh, OH), axis=0)
        oh_last = tl.max(tl.where(valid, oh, 0), axis=0)
        kh_lo = (tl.maximum(pad_h - oh_last * STRIDE_H, 0) + DIL_H - 1) // DIL_H
        kh_hi = tl.minimum((tl.maximum(H + pad_h - oh_first * STRIDE_H, 0) + DIL_H - 1) // DIL_H,
                           KH)
        col_lo = tl.min(tl.where(valid, col0, W), axis=0)
        col_hi = tl.max(tl.where(valid, col0, -W), axis=0)
        for kh in range(kh_lo, kh_hi):
            ih = oh * STRIDE_H - pad_h + kh * DIL_H
            row_ok = valid & (ih >= 0) & (ih < H)
            acc = _window_row(acc, x_base + (ih * stride_xh)[:, None], row_ok, w_ptr, co,
                              mask_c, kh, col0, col_lo, col_hi, W, stride_xw, stride_wt,
                              stride_wc, KW, BLOCK_W, STRIDE_W, DIL_W, False, 0,
                              KH > 1 and KW > 2 * TAP_GROUP, EVEN_C, ACC)
    if HAS_BIAS:
        if EVEN_C:
            b = tl.load(b_ptr + co).to(ACC)
        else:
            b = tl.load(b_ptr + co, mask=mask_c, other=0.0).to(ACC)
        biased = ()
        for j in tl.static_range(BLOCK_W):
            biased = biased + (acc[j] + b[None, :],)
        acc = biased
    mask_out = valid[:, None] & mask_c[None, :]
    y_rows = (y_ptr + (n * stride_yn + oh * stride_yh)[:, None] + (co * stride_yc)[None, :])
    _store_window(acc, y_rows, mask_out, ow0, OW, stride_yw, BLOCK_W, EVEN_W)


@triton.jit
def depthwise_bwd_input_kernel(
    dy_ptr,  # output gradient dy (N, C_out, OH, OW), any strides
    w_ptr,  # weight, tap t of channel c at t*stride_wt + c*stride_wc
    dx_ptr,  # input gradient dx (N, C_in, H, W), any strides
    C_in, H, W, OH, OW, n_rows, n_img_rows, n_c_blocks,
    stride_dyn, stride_dyc, stride_dyh, stride_dyw,
    stride_wt, stride_wc,
    stride_dxn, stride_dxc, stride_dxh, stride_dxw,
    pad_h, pad_w,
    KH: tl.constexpr, KW: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    DIL_H: tl.constexpr, DIL_W: tl.constexpr,
    MULT: tl.constexpr, EVEN_C: tl.constexpr, EVEN_W: tl.constexpr, PHASE_W: tl.constexpr,
    IDX64: tl.constexpr, ACC: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Gather over taps: dx[n, ci, ih, iw] = sum_{j < MULT} sum_{kh, kw} dy[n, ci*MULT + j, oh, ow] * w[ci*MULT + j, 0, kh, kw]

    over the taps whose output position is integral and in range:
    oh = (ih + pad_h - kh * DIL_H) / STRIDE_H with remainder 0 and 0 <= oh < OH (same for ow).
    Segments run along the input's W; BLOCK_W is a multiple of STRIDE_W and PHASE_W =
    pad_w % STRIDE_W, so which taps of a column divide evenly is known at compile time.
    Grid: (cdiv(n_rows, BLOCK_R) * n_c_blocks,), n_rows = segments x N*H (n_img_rows).
    """
    pid = tl.program_id(0)
    n, ih, iw0, valid = _segments(pid // n_c_blocks, n_rows, n_img_rows, H, BLOCK_R, BLOCK_W,
                                  IDX64)
    ci = (pid % n_c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    if IDX64:
        ci = ci.to(tl.int64)
    mask_c = ci < C_in
    col0 = iw0 // STRIDE_W + (pad_w - PHASE_W) // STRIDE_W  # dy column at offset 0
    acc = _zeros(BLOCK_R, BLOCK_C, BLOCK_W, ACC)
    for m in tl.static_range(MULT):
        co = ci * MULT + m
        dy_base = dy_ptr + (n * stride_dyn)[:, None] + (co * stride_dyc)[None, :]
        ROW_UNROLL: tl.constexpr = KH if KH * KW <= MAX_UNROLL else 1
        for kh in tl.range(0, KH, loop_unroll_factor=ROW_UNROLL):
            num_h = ih + pad_h - kh * DIL_H
            oh = num_h // STRIDE_H
            ok = valid & (num_h >= 0) & (oh < OH)
            if STRIDE_H > 1:
                ok = ok & (num_h % STRIDE_H == 0)
            acc = _window_row(acc, dy_base + (oh * stride_dyh)[:, None], ok, w_ptr, co,
                              mask_c, kh, col0, 0, 0, OW, stride_dyw, stride_wt, stride_wc, KW,
                              BLOCK_W, STRIDE_W, DIL_W, True, PHASE_W, False, EVEN_C, ACC)
    dx_rows = (dx_ptr + (n * stride_dxn + ih * stride_dxh)[:, None] + (ci * stride_dxc)[None, :])
    _store_window(acc, dx_rows, valid[:, None] & mask_c[None, :], iw0, W, stride_dxw, BLOCK_W,
                  EVEN_W)
