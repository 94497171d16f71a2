"""Depthwise weight and bias gradient: a split reduction over the output pixels, tiles outer,
taps inner.

Notation as in ``depthwise.py`` (1D is 2D with H = OH = KH = 1)::

    x  (N, C_in,  H,  W)      input, any strides
    dy (N, C_out, OH, OW)     output gradient, any strides; C_out = C_in * MULT
    ih = oh * STRIDE_H - pad_h + kh * DIL_H      iw = ow * STRIDE_W - pad_w + kw * DIL_W
    flat tap index t = kh * KW + kw

A tile is a segment of one output row: BLOCK_W output columns x BLOCK_C channels. Each tile's
dy is loaded once and multiplies the x window of every tap of the program's tap group
(BLOCK_T taps: those loads of x overlap from tap to tap and hit L1/L2); the products
accumulate per (tap, column, channel) in ACC and are reduced over the columns once per split.
Loads are upcast to ACC before any arithmetic (fp32, or fp64 for fp64 tensors). With IDX64 the
offsets are int64; the tile base pointers always step in int64.
"""
import triton
import triton.language as tl

from triton_dsd.kernels._common import store_partial


@triton.jit
def _upcast(v, ACC: tl.constexpr):
    """v as ACC. bf16 -> fp32 is a 16-bit shift of the bits: written out, the compiler does it
    in one integer instruction per element (a conversion unpacks each pair in up to three)."""
    if v.dtype == tl.bfloat16 and ACC == tl.float32:
        return (v.to(tl.int16, bitcast=True).to(tl.int32) << 16).to(tl.float32, bitcast=True)
    else:
        return v.to(ACC)


@triton.jit
def _tap_slots(slot, pid_g, KH: tl.constexpr, KW: tl.constexpr, BLOCK_T: tl.constexpr):
    """(kh, kw, static_ok, ok) of tap slots ``slot`` (any shape) of tap group pid_g, chosen so
    that which slots are real taps is known when compiling wherever possible (the unused
    slots then compile away; static_ok is that part of ok):
    * one group (BLOCK_T >= KH*KW): slot s is tap s;
    * whole rows (BLOCK_T >= KWP, KW rounded up to a power of two): BLOCK_T // KWP kernel rows
      of KWP slots (slots kw >= KW unused), cdiv(KH, BLOCK_T // KWP) groups;
    * row segments (BLOCK_T < KWP): each kernel row is cdiv(KW, BLOCK_T) groups.
    """
    # KWP = KW rounded up to a power of two (bit smearing of KW - 1, in constexpr arithmetic)
    K1: tl.constexpr = KW - 1
    K2: tl.constexpr = K1 | (K1 >> 1)
    K4: tl.constexpr = K2 | (K2 >> 2)
    K8: tl.constexpr = K4 | (K4 >> 4)
    KWP: tl.constexpr = (K8 | (K8 >> 8) | (K8 >> 16)) + 1
    SEGS: tl.constexpr = (KW + BLOCK_T - 1) // BLOCK_T
    if BLOCK_T >= KH * KW:
        kh = slot // KW
        kw = slot % KW
        static_ok = slot < KH * KW
        ok = static_ok
    elif BLOCK_T >= KWP:
        kh = pid_g * (BLOCK_T // KWP) + slot // KWP
        kw = slot % KWP
        static_ok = kw < KW
        ok = static_ok & (kh < KH)
    else:
        kh = pid_g // SEGS + slot * 0
        kw = (pid_g % SEGS) * BLOCK_T + slot
        static_ok = kw < KW
        ok = static_ok
    return kh, kw, static_ok, ok


@triton.jit
def depthwise_bwd_weight_kernel(
    x_ptr,  # input x (N, C_in, H, W), any strides
    dy_ptr,  # output gradient dy (N, C_out, OH, OW), any strides
    part_ptr,  # partial sums (n_splits or 1, KH*KW + 1, C_out), contiguous, ACC; row KH*KW is db
    C_out, H, W, OH, OW, n_tiles_w, total_tiles, tiles_per_split,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_dyn, stride_dyc, stride_dyh, stride_dyw,
    pad_h, pad_w,
    KH: tl.constexpr, KW: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    DIL_H: tl.constexpr, DIL_W: tl.constexpr,
    MULT: tl.constexpr, HAS_BIAS: tl.constexpr, ATOMIC: tl.constexpr,
    IDX64: tl.constexpr, ACC: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Split reduction over the P = N*OH*OW output pixels:

    dw[co, 0, kh, kw] = sum_{n, oh, ow} dy[n, co, oh, ow] * x[n, co // MULT, ih, iw]
    db[co]            = sum_{n, oh, ow} dy[n, co, oh, ow]

    Program (c, s, g) owns channels [c*BLOCK_C, (c+1)*BLOCK_C), the row tiles
    [s*tiles_per_split, (s+1)*tiles_per_split) (tile i: output row i // n_tiles_w of the
    N*OH rows, columns from (i % n_tiles_w)*BLOCK_W) and tap group g (BLOCK_T tap slots, see
    below); tap group 0 also sums db. Per tile it loads dy [BLOCK_W, BLOCK_C] once and the x
    window [BLOCK_T, BLOCK_W, BLOCK_C], and accumulates their products; it reduces over W
    once, at the end of the split. Its sums go to partial rows t = kh*KW + kw (db: row
    KH*KW): ATOMIC, fp32 atomic adds into one shared row block (fast, order varies run to
    run); otherwise split s stores its own row block and ``reduce.splitk_reduce_kernel`` sums
    them in a fixed order (bit-identical run to run).
    Grid: (cdiv(C_out, BLOCK_C), n_splits, n_tap_groups), n_tap_groups as below
    (``launchers.wgrad_tap_groups``).
    """
    pid_s = tl.program_id(1)
    pid_g = tl.program_id(2)
    T: tl.constexpr = KH * KW
    co = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = co < C_out
    # The tap axis and the tile's columns share one axis of the x window, r = slot*BLOCK_W + w
    # (slot-major: a thread's registers hold its column's tap slots, the same in every Triton
    # version; a separate tap axis is laid across threads by some, which then shuffles dy
    # every tile).
    R: tl.constexpr = BLOCK_T * BLOCK_W
    r = tl.arange(0, R)
    kh, kw, static_ok, ok_t = _tap_slots(r // BLOCK_W, pid_g, KH, KW, BLOCK_T)
    STATIC_SLOTS: tl.constexpr = BLOCK_T >= T or BLOCK_T >= KW  # see _tap_slots
    lane_r = r % BLOCK_W
    lane = tl.arange(0, BLOCK_W)
    ci = co // MULT
    co_y = co
    if IDX64:
        kh = kh.to(tl.int64)
        kw = kw.to(tl.int64)
        lane_r = lane_r.to(tl.int64)
        lane = lane.to(tl.int64)
        ci = ci.to(tl.int64)
        co_y = co.to(tl.int64)
    # Loop-invariant parts of the offsets: the tap's shift in the x window, the tile column,
    # the channel. A tile adds its own scalar base (a pointer stepped from tile to tile), and
    # its input row and column (ih0, iw0) to the tap's:
    #   ih = ih0 + tap_h[r],  iw = iw0 + iw_lane[r],  ih0 = oh*STRIDE_H, iw0 = w0*STRIDE_W
    tap_h = kh * DIL_H - pad_h
    iw_lane = lane_r * STRIDE_W + kw * DIL_W - pad_w
    # a tap's column shift kept apart: with W contiguous (NCHW) it becomes an immediate offset
    x_off = (tap_h * stride_xh + (lane_r * STRIDE_W - pad_w) * stride_xw)[:, None] + (
        ci * stride_xc)[None, :]
    x_off_w = (kw * DIL_W * stride_xw)[:, None]
    dy_off = (lane * stride_dyw)[:, None] + (co_y * stride_dyc)[None, :]

    # The split's first tile (n, oh, wt) is decoded once; each later tile steps the two base
    # pointers by one of three scalar steps: the next w-tile, the next row, the next image.
    t_start = pid_s * tiles_per_split
    n_tiles = tl.minimum(tiles_per_split, total_tiles - t_start)
    row = t_start // n_tiles_w
    wt = t_start % n_tiles_w
    n = tl.cast(row // OH, tl.int64)
    oh = row % OH
    sxn = tl.cast(stride_xn, tl.int64)
    sxh = tl.cast(stride_xh, tl.int64) * STRIDE_H
    sxw = tl.cast(stride_xw, tl.int64) * (BLOCK_W * STRIDE_W)
    syn = tl.cast(stride_dyn, tl.int64)
    syh = tl.cast(stride_dyh, tl.int64)
    syw = tl.cast(stride_dyw, tl.int64) * BLOCK_W
    x_tile = x_ptr + (n * sxn + oh * sxh + wt * sxw)
    dy_tile = dy_ptr + (n * syn + oh * syh + wt * syw)
    last_w = n_tiles_w - 1
    x_step_h = sxh - last_w * sxw
    x_step_n = sxn - (OH - 1) * sxh - last_w * sxw
    dy_step_h = syh - last_w * syw
    dy_step_n = syn - (OH - 1) * syh - last_w * syw
    acc = tl.zeros([R, BLOCK_C], dtype=ACC)
    db = tl.zeros([BLOCK_W, BLOCK_C], dtype=ACC)
    for _ in range(n_tiles):
        ih0 = oh * STRIDE_H
        iw0 = wt * (BLOCK_W * STRIDE_W)
        if IDX64:
            ih0 = tl.cast(ih0, tl.int64)
            iw0 = tl.cast(iw0, tl.int64)
        mask_o = (lane < OW - wt * BLOCK_W)[:, None] & mask_c[None, :]
        dyv = _upcast(tl.load(dy_tile + dy_off, mask=mask_o, other=0.0), ACC)
        # 0 <= i < n as one unsigned compare; the row's and the channel's checks fold into the
        # column's bound (W, or 0 where the row or the channel is out)
        ih = ih0 + tap_h
        iw = iw0 + iw_lane
        if IDX64:
            ok_h = ih.to(tl.uint64, bitcast=True) < H
            lim = tl.where((ok_t & ok_h)[:, None] & mask_c[None, :], W, 0).to(tl.uint64)
            ok_x = iw.to(tl.uint64, bitcast=True)[:, None] < lim
        else:
            ok_h = ih.to(tl.uint32, bitcast=True) < H
            lim = tl.where((ok_t & ok_h)[:, None] & mask_c[None, :], W, 0).to(tl.uint32)
            ok_x = iw.to(tl.uint32, bitcast=True)[:, None] < lim
        xv = _upcast(tl.load((x_tile + x_off) + x_off_w, mask=ok_x, other=0.0), ACC)
        # dy of each row r: the tile's dy, repeated over the tap slots (in registers)
        dy_r = tl.reshape(tl.broadcast_to(dyv[None, :, :], [BLOCK_T, BLOCK_W, BLOCK_C]),
                          [R, BLOCK_C])
        if STATIC_SLOTS:  # a select on a constant: the unused tap slots compile away
            acc = tl.where(static_ok[:, None], acc + dy_r * xv, acc)
        else:
            acc += dy_r * xv
        if HAS_BIAS:
            if BLOCK_T >= T:
                db += dyv
            elif pid_g == 0:
                db += dyv
        # next tile: the next w-tile of this row, or the first of the next row (and image)
        wt += 1
        wrap_w = wt == n_tiles_w
        wt = tl.where(wrap_w, 0, wt)
        oh = tl.where(wrap_w, oh + 1, oh)
        wrap_h = oh == OH
        oh = tl.where(wrap_h, 0, oh)
        x_tile += tl.where(wrap_h, x_step_n, tl.where(wrap_w, x_step_h, sxw))
        dy_tile += tl.where(wrap_h, dy_step_n, tl.where(wrap_w, dy_step_h, syw))

    if ATOMIC:
        part_base = part_ptr
    else:
        part_base = part_ptr + tl.cast(pid_s, tl.int64) * ((T + 1) * C_out)
    part = tl.sum(tl.reshape(acc, [BLOCK_T, BLOCK_W, BLOCK_C]), axis=1)
    kh_t, kw_t, _, ok_s = _tap_slots(tl.arange(0, BLOCK_T), pid_g, KH, KW, BLOCK_T)
    store_partial(part_base + (kh_t * KW + kw_t)[:, None] * C_out + co[None, :], part,
                  ok_s[:, None] & mask_c[None, :], ATOMIC)
    if HAS_BIAS:
        if pid_g == 0:
            store_partial(part_base + T * C_out + co, tl.sum(db, axis=0), mask_c, ATOMIC)
