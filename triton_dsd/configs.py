"""Default configs and tuning spaces of every kernel family, as functions of the problem key.

A family's default (used when nothing is stored) and its space (what ``triton-dsd tune``
times) both read only the key fields of ``keys.py`` and the element size, so a stored key is
enough to rebuild either. The registry (``registry.py``) ties them to the kernels.
"""
from __future__ import annotations

from typing import Dict, List, Optional

from triton_dsd import _runtime
from triton_dsd.keys import ints
from triton_dsd.kernels._common import ROW_LOOP_TAPS

#: None: the interpreter gets large tiles (each program costs ~0.1 s there, whatever its size),
#: the GPU its own. Tests set False to run the GPU's default tiles under the interpreter.
INTERPRETER_TILES: Optional[bool] = None


def _interp_tiles() -> bool:
    return _runtime.INTERPRET if INTERPRETER_TILES is None else INTERPRETER_TILES

Fields = Dict[str, object]

#: shared memory the default GEMM configs may use for their pipeline stages (fits sm_80 and
#: sm_90 with room for two blocks per SM)
DEFAULT_SMEM = 100 * 1024
#: shared memory the tuning spaces may use (fits sm_80's 163 KiB and sm_90's 227 KiB)
SMEM_LIMIT = 160 * 1024
#: input bytes a depthwise tile may touch (the tile plus its dilated halo) to stay in L1
DW_FOOTPRINT = 64 * 1024


def _p2(lo: int, hi: int) -> List[int]:
    out, v = [], lo
    while v <= hi:
        out.append(v)
        v *= 2
    return out


# ----------------------------------------------------------------------------- depthwise
def depthwise_default(f: Fields, elem_bytes: int) -> Dict[str, int]:
    """Register windows (``kernels/depthwise.py``): BLOCK_R row segments of BLOCK_W outputs for
    BLOCK_C channels. channels_last: 16-byte channel vectors (64 channels of a 16-bit dtype,
    32 of fp32), the remaining lanes and the warps over segments, one segment a thread.
    NCHW: one channel, every lane a segment (128 of them on 4 warps). BLOCK_W trades the
    window's reuse ((BLOCK_W + (KW-1)*d) / BLOCK_W loads per output and kernel row) against the
    BLOCK_W accumulators each thread holds. Under the interpreter each program costs ~0.1 s
    whatever its size, so tiles are large."""
    return _window_tile(f, elem_bytes)


def depthwise_bwd_input_default(f: Fields, elem_bytes: int) -> Dict[str, int]:
    """The input gradient's window tile is the forward's, but 16-bit windows whose row of taps
    spans more than 12 columns keep 2 outputs a segment (4 spill at 13x13 d2)."""
    return _window_tile(f, elem_bytes, transposed=True)


def _window_tile(f: Fields, elem_bytes: int, transposed: bool = False) -> Dict[str, int]:
    kh, kw = ints(f["K"])
    oh, ow = ints(f["HW"])
    C = int(f["C"])
    rows = oh * max(1, -(-ow // 8))
    if _interp_tiles():
        return dict(BLOCK_R=min(_pow2(rows), 64), BLOCK_W=min(ow, 8), BLOCK_C=min(_pow2(C), 64),
                    num_warps=4)
    vec = max(1, 16 // elem_bytes)
    warps = 4
    if f["layout"] == "cl":
        block_c = min(_pow2(C), vec * 8)
        block_r = (32 // max(1, block_c // vec)) * warps
        # BLOCK_W accumulators of `vec` channels a thread beside a tap group's weights and
        # the window's columns in flight: 8 stays under 255 registers on sm_80/sm_90 while a
        # row's taps span (KW-1)*d <= 12 columns (fp32: 16; 1D: 30) at stride 1 and multiplier
        # 1, and for 1D rows of more than ROW_LOOP_TAPS taps (they loop over tap groups: one
        # group's columns in flight; K33..87 at d 1..4, bf16 and fp32); strided, multiplied
        # or wider windows take 4, wide 16-bit input gradients 2 (measured by `inspect
        # --sweep`: ptxas spills some narrower windows, not wider ones)
        sw, dw = ints(f["s"])[1], ints(f["d"])[1]
        span = (kw - 1) * dw
        fits = (span <= (12 if elem_bytes <= 2 else 16) or (kh == 1 and span <= 30)
                or (kh == 1 and kw > ROW_LOOP_TAPS.value))
        block_w = 8 if fits and sw == 1 and int(f["m"]) == 1 else 4
        if transposed and elem_bytes <= 2 and kh > 1 and span > 12:
            block_w = 2
    else:  # one channel, every lane a segment: the window is one thread's registers
        block_c, block_r, block_w = 1, 32 * warps, 32
    return dict(BLOCK_R=block_r, BLOCK_W=min(block_w, ow), BLOCK_C=block_c, num_warps=warps)


def depthwise_space(f: Fields, elem_bytes: int) -> List[Dict[str, int]]:
    """Window tiles: BLOCK_W 2..16 outputs a segment, BLOCK_C channels (at least a 16-byte
    vector in channels_last, at most 8 in NCHW), BLOCK_R row segments so that each thread holds
    1..4 segments; at most 128 accumulators a thread."""
    oh, ow = ints(f["HW"])
    C = int(f["C"])
    cl = f["layout"] == "cl"
    vec = max(1, 16 // elem_bytes)
    rows = oh * max(1, -(-ow // 2))
    out = []
    for bw in (2, 4, 8, 16):
        if bw > max(2, _pow2(ow)):
            continue
        for bc in _p2(1, min(_pow2(C), 128)):
            if cl and bc < min(vec, _pow2(C)) or not cl and bc > 8:
                continue
            for warps in (2, 4, 8):
                threads = 32 * warps
                for br in _p2(1, min(_pow2(rows), 1024)):
                    tile = br * bc
                    if not threads <= tile <= 4 * threads * min(vec, bc):
                        continue
                    if bw * tile // threads > 128:
                        continue
                    out.append(dict(BLOCK_R=br, BLOCK_W=bw, BLOCK_C=bc, num_warps=warps))
    return out


# ----------------------------------------------------------------------------- depthwise dW
#: the weight gradient's live tap slots per program (accumulators and loaded x in registers)
#: with the default tiles: 16 (16 bytes of channels per thread and slot, 12 registers a slot
#: in bf16, 8 in fp32; NCHW: 4 elements per thread and slot). Row segments (runtime-masked
#: slots) get at most 8: 16 spill a bf16 31x31 on sm_80.
DW_WGRAD_SLOTS = 16
#: relative cost of one tap slot and of one tap group (its dy tile, tile stepping, loop), in
#: SASS instructions per tile and thread (sm_90, bf16, channels_last)
DW_WGRAD_SLOT_COST, DW_WGRAD_GROUP_COST = 23, 50


def _pow2(n: int) -> int:
    return 1 << (max(int(n), 1) - 1).bit_length()


def wgrad_block_t(kh: int, kw: int, slots: int = DW_WGRAD_SLOTS) -> int:
    """BLOCK_T of the weight gradient for at most ``slots`` live tap slots (see the kernel's
    tap groups): every tap at once if they fit (dy loaded once per tile); else one kernel row
    per group, its padding slots compiled away; else row segments of at most 8 slots, the
    size with the fewest modeled instructions (slots issued plus one dy tile per group)."""
    if kh * kw <= slots:
        return _pow2(kh * kw)
    if kw <= slots:
        return _pow2(kw)
    best = None
    for bt in _p2(4, min(8, slots)):
        segs = -(-kw // bt)
        cost = segs * (bt * DW_WGRAD_SLOT_COST + DW_WGRAD_GROUP_COST)
        if best is None or cost < best[0]:
            best = (cost, bt)
    return best[1]


def depthwise_bwd_weight_default(f: Fields, elem_bytes: int) -> Dict[str, int]:
    """Tiles of one output row whose threads exactly cover BLOCK_W x BLOCK_C, so the tap axis
    stays inside each thread and the dy tile broadcasts over it with no shuffle (with spare
    threads Triton spreads the taps over them, and dy crosses shared memory every tile):
    channels_last, 64 channels (16-byte loads, one vector per thread and tap slot) and as many
    columns as 4 warps cover; NCHW (W contiguous, loads of one element), up to 128 columns on
    one warp per 32 columns, 4 channels per thread. BLOCK_T from the register budget
    DW_WGRAD_SLOTS (no spills on sm_80/sm_90 for K 3..31). Under the interpreter each program
    costs ~0.1 s whatever its size, so tiles and tap groups are as large as the problem
    allows."""
    kh, kw = ints(f["K"])
    C = int(f["C"])
    _, ow = ints(f["HW"])
    cl = f["layout"] == "cl"
    if _interp_tiles():
        return dict(BLOCK_T=min(_pow2(kh * kw), 64), BLOCK_W=min(ow, 64), BLOCK_C=min(C, 64),
                    num_warps=4)
    if cl:  # lanes along C (one 16-byte vector each), then along W; warps along W
        per_thread = max(1, 16 // elem_bytes)
        block_c = min(C, 64)
        block_w = min(ow, max(1, 128 * per_thread // block_c))
        warps = max(1, min(4, block_w * block_c // (32 * per_thread)))
    else:  # lanes and warps along W, 4 channels per thread
        block_w = min(ow, 128)
        warps = max(1, block_w // 32)
        block_c = min(C, 4)
    # channels_last with a depth multiplier: x (channel co // m) does not vectorise like dy,
    # the two tiles are laid out differently and dy is converted every tile: half the slots
    slots = DW_WGRAD_SLOTS // 2 if cl and int(f["m"]) > 1 else DW_WGRAD_SLOTS
    block_t = wgrad_block_t(kh, kw, slots)
    return dict(BLOCK_T=block_t, BLOCK_W=block_w, BLOCK_C=block_c, num_warps=_pow2(warps))


def depthwise_bwd_weight_space(f: Fields, elem_bytes: int) -> List[Dict[str, int]]:
    """Tiles no larger than the problem, each thread holding 1 or 2 loads' worth of channels
    per tap slot (channels_last) or 2 to 8 elements with every thread along W (NCHW) -- spare
    threads would take part of the tap axis and shuffle dy every tile -- and within the
    register budget of DW_WGRAD_SLOTS;
    halo-aware (the x rows and dilated columns a tile's taps read stay within DW_FOOTPRINT,
    else the smallest footprints are kept)."""
    kh, kw = ints(f["K"])
    dh, dw = ints(f["d"])
    sh, sw = ints(f["s"])
    _, ow = ints(f["HW"])
    C = int(f["C"])
    cl = f["layout"] == "cl"
    taps, kwp = kh * kw, _pow2(kw)
    vec = max(1, 16 // elem_bytes) if cl else 1
    per_thread = (vec, 2 * vec) if cl else (2, 4, 8)
    # registers per tap slot and element: the accumulator, the loaded value, (NCHW) a share
    # of the element's address (a rough fit of the compiled defaults)
    slot_regs = (2 if elem_bytes == 8 else 1) + elem_bytes / 4 + (0 if cl else 0.5)
    budget = DW_WGRAD_SLOTS * 8 * 1.5  # the default's: 16 slots of 8 bf16 elements
    scored = []
    for bt in _p2(2, min(_pow2(taps), 32)):
        if bt >= taps:
            live, rows, span = taps, kh, kw
        elif bt >= kwp:
            live, rows, span = kw * (bt // kwp), bt // kwp, kw
        else:
            live, rows, span = bt, 1, bt
        for bc in _p2(1, min(C, 128)):
            for bw in _p2(1, min(ow, 128)):
                for warps in (1, 2, 4, 8):
                    e = bw * bc // (32 * warps)
                    if e not in per_thread or live * e * slot_regs > budget:
                        continue
                    if not cl and bw < min(32 * warps, ow):  # NCHW: threads along W only
                        continue
                    foot = (min(rows, kh) * ((bw - 1) * sw + 1 + dw * (span - 1)) * bc
                            * elem_bytes)
                    scored.append((foot, dict(BLOCK_T=bt, BLOCK_W=bw, BLOCK_C=bc,
                                              num_warps=warps)))
    if not scored:
        return []
    cap = max(DW_FOOTPRINT, 2 * min(fp for fp, _ in scored))
    return [c for fp, c in scored if fp <= cap]


# ----------------------------------------------------------------------------- GEMMs
def _gemm_dims(f: Fields):
    return int(f["P"]), int(f["M"]), int(f["C"])


def pointwise_default(f: Fields, elem_bytes: int) -> Dict[str, int]:
    P, M, K = _gemm_dims(f)
    interp = _interp_tiles()
    block_p = min(max(P, 16), 256 if interp else 128)
    block_m = min(max(M, 16), 128)
    block_k = min(max(K, 16), 128 if interp else 64)
    stages = 3
    while not interp and block_k > 16 and \
            stages * (block_p + block_m) * block_k * elem_bytes > DEFAULT_SMEM:
        block_k //= 2
    warps = 8 if block_p * block_m >= 128 * 128 else 4
    return dict(BLOCK_P=block_p, BLOCK_M=block_m, BLOCK_K=block_k, num_warps=warps,
                num_stages=stages)


def pointwise_bwd_weight_default(f: Fields, elem_bytes: int) -> Dict[str, int]:
    """dW = dY^T X: a [BLOCK_M x BLOCK_K] tile of dW per program, the pixel reduction split
    across programs. 128 x 128 on 8 warps when M and K allow (the model: the per-block
    address and loop work, not the HGMMA, bounds a 64 x 64 tile)."""
    P, M, K = _gemm_dims(f)
    interp = _interp_tiles()
    if interp:
        return dict(BLOCK_P=min(max(P, 16), 256), BLOCK_M=min(max(M, 16), 128),
                    BLOCK_K=min(max(K, 16), 128), num_warps=4, num_stages=3)
    wide = 128 if elem_bytes <= 2 else 64  # fp32 128 x 128 spills on sm_80
    block_m, block_k = min(max(M, 16), wide), min(max(K, 16), wide)
    warps = 8 if block_m * block_k >= 128 * 128 else 4
    return dict(BLOCK_P=min(max(P, 16), 64), BLOCK_M=block_m, BLOCK_K=block_k, num_warps=warps,
                num_stages=3)


def _gemm_space(f: Fields, elem_bytes: int, weight_grad: bool) -> List[Dict[str, int]]:
    P, M, K = _gemm_dims(f)
    out = []
    for bp in _p2(32, max(32, min(P, 256))):
        for bm in _p2(16, max(16, min(M, 256))):
            for bk in _p2(16, max(16, min(K, 128))):
                for warps in (4, 8):
                    for stages in (2, 3, 4):
                        a, b = (bm, bk) if weight_grad else (bp, bm)
                        red = bp if weight_grad else bk
                        if stages * (a + b) * red * elem_bytes > SMEM_LIMIT:
                            continue
                        acc = bm * bk if weight_grad else bp * bm
                        if not 16 <= acc // (32 * warps) <= 128:
                            continue
                        out.append(dict(BLOCK_P=bp, BLOCK_M=bm, BLOCK_K=bk, num_warps=warps,
                                        num_stages=stages))
    return out


def pointwise_space(f: Fields, elem_bytes: int) -> List[Dict[str, int]]:
    return _gemm_space(f, elem_bytes, weight_grad=False)


def pointwise_bwd_weight_space(f: Fields, elem_bytes: int) -> List[Dict[str, int]]:
    return _gemm_space(f, elem_bytes, weight_grad=True)


# ----------------------------------------------------------------------------- fused
def _fused_dims(f: Fields):
    oh, ow = ints(f["HW"])
    return oh * ow, int(f["M"]), int(f["C"])


#: the z-stationary fused forward's z tile holds at most this many ACC words a thread on its
#: FUSED_WARPS warps. channels_last: [64 x 128] or [32 x 256] fp32 on 4 warps, 64 registers,
#: built on register windows along W (``launchers.dsd_window``: 4 or 2 outputs a segment, each
#: source column loaded once per kernel row), 170-215 registers in all. NCHW builds the tile
#: pixel-major with scalar loads (an address each) on 8 warps: [256 channels x 32 pixels]
#: (at 64 pixels Triton 3.6 spills on sm_80).
FUSED_Z_WORDS = {"cl": 64, "nchw": 32}
#: pixel rows of the z tile (min, max). channels_last: z is the MMA's A operand, one product a
#: window position (BLOCK_P / WIN rows, at least 16: tl.dot's minimum); 64 pixels (392 programs
#: at N=8 56x56, three even waves on 132 SMs) beat 128 (two uneven ones; and [128 x 64]
#: 16-bit spills on sm_80) and the window (WIN 4 at 64 x 128) cuts the loads and converts
#: per tap. NCHW: the product is transposed
#: (y^T = wp @ z^T, z^T the shared-memory B operand), so pixels are the MMA's columns and
#: BLOCK_M is the one held to >= 64; at least 32 pixels, since every program reads all of
#: the pointwise weight (C*m*M elements per BLOCK_P pixels, from L2).
FUSED_Z_ROWS = {"cl": (32, 64), "nchw": (32, 64)}
FUSED_WARPS = {"cl": 4, "nchw": 8}
#: under the interpreter the z-stationary path takes C*m <= 64 (the old interpreted BLOCK_K),
#: so the test grid's wider layers (C*m = 80) keep exercising the recompute path
FUSED_INTERP_Z_CAP = 64


def _np2(n: int) -> int:
    return 1 << (max(int(n), 1) - 1).bit_length()


def fused_z_stationary_tile(CM: int, M: int, P: int, elem_bytes: int, layout: str = "cl",
                            min_rows: Optional[int] = None):
    """(BLOCK_P, BLOCK_M, BLOCK_K, num_warps, num_stages) of the z-stationary fused forward (a
    program computes the z of its pixels for all C*m channels once, then loops over every M
    block), or None when C*m is too wide for it.

    BLOCK_K = next_pow2(C*m), at least 16 (tl.dot's minimum). BLOCK_P: what FUSED_Z_WORDS
    allows on FUSED_WARPS warps (fp64: 8) within FUSED_Z_ROWS; channels_last takes twice
    the warps when 4 leave fewer than its minimum rows, else None. BLOCK_M: up to 128 (NCHW:
    at least 64). Shared memory holds the rounded z tile, the stages of [BLOCK_K x BLOCK_M]
    pointwise weights and the output tile's layout change: BLOCK_M (to 64), the stages (2,
    then 1; not fp64) then BLOCK_P (to its minimum) give way to fit SMEM_LIMIT, else None
    (16-bit channels_last C*m = 512 gets 32 x 64 on one stage, 100 KiB; fp32 stops at 256,
    fp64 at 64). Not DEFAULT_SMEM: these programs take 120-255 registers a thread, so one
    or two blocks run per SM whatever their shared memory; SMEM_LIMIT fits sm_80's per-block
    maximum. min_rows: instead of FUSED_Z_ROWS's minimum (``fused_norm_config``)."""
    acc_words = 2 if elem_bytes == 8 else 1
    lo, hi = FUSED_Z_ROWS[layout]
    lo = lo if min_rows is None else min_rows
    bk = max(16, _np2(CM))
    # fp64 builds z tap by tap (no windows, ``launchers.dsd_window``): on 8 warps, as before
    warps = 8 if acc_words == 2 else FUSED_WARPS[layout]
    bp = min(hi, FUSED_Z_WORDS[layout] * 32 * warps // (bk * acc_words))
    if bp < lo and layout == "cl":
        warps *= 2
        bp = min(hi, FUSED_Z_WORDS[layout] * 32 * warps // (bk * acc_words))
    if bp < lo:
        return None
    bm_min = 64 if layout == "nchw" else 16
    bm = min(max(_np2(M), bm_min), 128)
    stages = 2
    while (bp * bk + stages * bk * bm + bp * bm) * elem_bytes > SMEM_LIMIT:
        if bm > 64:
            bm //= 2
        elif stages > 1 and layout == "cl" and acc_words == 1:
            stages = 1
        elif bp > lo:
            bp //= 2
        else:
            return None
    return min(bp, max(P, lo)), bm, bk, warps, stages


#: pixel rows the layer norm's z tile may go down to where FUSED_Z_ROWS's minimum leaves no
#: tile (NCHW past 256 16-bit or 128 fp32 channels): 16 (tl.dot's minimum), e.g. [512 x 16]
#: bf16 on 8 warps, 171-214 registers
FUSED_NORM_MIN_ROWS = 16


def fused_norm_config(CM: int, M: int, P: int, elem_bytes: int,
                      layout: str = "cl") -> Optional[Dict[str, int]]:
    """The config of a fused forward with a layer norm between the stages: always
    z-stationary (the norm reduces over every channel of a pixel), or None when C*m is too
    wide for one tile.

    ``fused_z_stationary_tile``'s tile; where it has none, the same with FUSED_NORM_MIN_ROWS
    pixel rows; fp32 channels_last tiles of 256 channels on 8 warps, not 4 (32 words a
    thread: [32 x 256] fp32 on 4 warps spills at K7 on sm_80 and sm_90, norm or not). With
    these, every C*m up to ``launchers.DSD_MID_NORM_MAX_CM`` compiles without spills (K 3/5/7,
    1D and 2D, both layouts, Triton 3.6 and 3.9). Under the interpreter, large tiles."""
    if _interp_tiles():
        return dict(BLOCK_P=min(_np2(max(P, 16)), 256), BLOCK_M=min(_np2(max(M, 16)), 128),
                    BLOCK_K=max(16, _np2(CM)), num_warps=4, num_stages=2)
    zs = fused_z_stationary_tile(CM, M, P, elem_bytes, layout)
    if zs is None:
        zs = fused_z_stationary_tile(CM, M, P, elem_bytes, layout, FUSED_NORM_MIN_ROWS)
    if zs is None:
        return None
    bp, bm, bk, warps, stages = zs
    if layout == "cl" and elem_bytes == 4 and bk >= 256:
        warps = max(warps, 8)
    return dict(BLOCK_P=bp, BLOCK_M=bm, BLOCK_K=bk, num_warps=warps, num_stages=stages)


def fused_default(f: Fields, elem_bytes: int) -> Dict[str, int]:
    """z-stationary when C*m fits (``fused_z_stationary_tile``; channels_last on 4 warps, 8
    past C*m = 256; NCHW on 8): each program computes its [BLOCK_P x C*m] z tile once and
    loops over all M.

    Wider layers recompute z per M block: a [BLOCK_P x BLOCK_M] output tile, z computed
    BLOCK_K channels at a time beside the accumulator. M <= 128: 64 pixels x 128 outputs
    (128 pixels when M <= 64), 16 channels a chunk (wider chunks spill once the taps' loads
    are in flight), z computed once. M > 128: 64 x 256 outputs, 32 channels a chunk (NCHW:
    16, whose scalar loads spill at 32 on sm_80): z is computed M/256 times, not M/128. At
    least 64 pixel rows keep sm_90's HGMMA. Under the interpreter tiles are large (one
    program costs ~0.1 s)."""
    P, M, CM = _fused_dims(f)
    interp = _interp_tiles()
    block_m = min(max(M, 16), 128)
    if interp:
        block_k = max(16, CM) if CM <= FUSED_INTERP_Z_CAP else 64
        return dict(BLOCK_P=min(max(P, 16), 256), BLOCK_M=block_m, BLOCK_K=block_k,
                    num_warps=4, num_stages=2)
    layout = "cl" if f["layout"] == "cl" else "nchw"
    zs = fused_z_stationary_tile(CM, M, P, elem_bytes, layout)
    if zs is not None:
        bp, bm, bk, warps, stages = zs
        return dict(BLOCK_P=bp, BLOCK_M=bm, BLOCK_K=bk, num_warps=warps, num_stages=stages)
    if M > 128:
        return dict(BLOCK_P=min(max(P, 16), 64), BLOCK_M=256,
                    BLOCK_K=32 if f["layout"] == "cl" else 16, num_warps=8, num_stages=2)
    block_p = min(max(P, 16), 128 if block_m <= 64 else 64)
    return dict(BLOCK_P=block_p, BLOCK_M=block_m, BLOCK_K=16, num_warps=8, num_stages=2)


def fused_space(f: Fields, elem_bytes: int) -> List[Dict[str, int]]:
    """Both paths. z-stationary (BLOCK_K = next_pow2(C*m) >= C*m): the z tile at most 2x
    FUSED_Z_WORDS ACC words a thread, the accumulator at most 128 words, shared memory the z
    tile plus the weight stages. Recompute (BLOCK_K < C*m, at most 64): z chunk and
    accumulator together at most 160 elements a thread."""
    P, M, CM = _fused_dims(f)
    acc_words = 2 if elem_bytes == 8 else 1
    bk_zs = max(16, _np2(CM))
    out = []
    for bp in _p2(32, max(32, min(P, 128))):
        for bm in _p2(16, max(16, min(M, 256))):
            for bk in _p2(16, max(16, min(bk_zs, 512))):
                zs = bk >= CM
                if not zs and bk > 64:
                    continue
                for warps in (4, 8):
                    threads = 32 * warps
                    for stages in (1, 2, 3):
                        if zs:
                            smem = (bp * bk + stages * bk * bm) * elem_bytes
                            fits = (bp * bk * acc_words <= 2 * FUSED_Z_WORDS["cl"] * threads
                                    and bp * bm * acc_words <= 128 * threads)
                        else:
                            smem = (stages * bk * bm + bp * bk) * elem_bytes
                            fits = (bp * bm + bp * bk) // threads <= 160
                        if smem > SMEM_LIMIT or not fits:
                            continue
                        out.append(dict(BLOCK_P=bp, BLOCK_M=bm, BLOCK_K=bk, num_warps=warps,
                                        num_stages=stages))
    return out


# ----------------------------------------------------------------------------- helpers
def limit(candidates: List[dict], n: Optional[int], default: dict) -> List[dict]:
    """At most n candidates: the default first, then an even spread of the space."""
    cands = [default] + [c for c in candidates if c != default]
    if n is None or len(cands) <= n:
        return cands
    step = len(cands[1:]) / max(n - 1, 1)
    return [cands[0]] + [cands[1 + int(i * step)] for i in range(n - 1)]
