"""Default configs and tuning spaces of every kernel family, as functions of the problem key.

A family's default (used when nothing is stored) and its space (what ``triton-dsd tune``
times) both read only the key fields of ``keys.py`` and the element size, so a stored key is
enough to rebuild either. The registry (``registry.py``) ties them to the kernels.
"""
from __future__ import annotations

from typing import Dict, List, Optional

from triton_dsd import _runtime
from triton_dsd.keys import ints
from triton_dsd.kernels._common import MAX_UNROLL

#: kernels with more taps than this loop over kernel rows (``kernels/_common.py``)
UNROLLED_TAPS = MAX_UNROLL.value
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
    """channels_last: channels are contiguous, so the tile is wide in C (16-byte loads) and a
    few pixels deep. NCHW: the tile is a patch of rows along W for one or a few channels.
    Kernels past UNROLLED_TAPS taps (a row loop with up to KW live loads) run 8 warps, so each
    thread holds 4 outputs, not 8: at 8 the k7 weight gradient and the k9 forward spill.
    Under the interpreter each program costs ~0.1 s whatever its size, so tiles are larger."""
    kh, kw = ints(f["K"])
    return _depthwise_tile(f, 8 if kh * kw > UNROLLED_TAPS else 4)


def depthwise_bwd_input_default(f: Fields, elem_bytes: int) -> Dict[str, int]:
    """The input gradient's tile is the forward's, on 4 warps whatever the kernel size (its
    row loop spills a register across the loop on sm_80 with 8 warps at 7x7)."""
    return _depthwise_tile(f, 4)


def _depthwise_tile(f: Fields, warps: int) -> Dict[str, int]:
    budget = 4096 if _interp_tiles() else 1024
    C = int(f["C"])
    oh, ow = ints(f["HW"])
    if f["layout"] == "cl":
        block_c = min(C, 64)
        block_w = min(ow, max(1, budget // block_c), 16 if oh > 1 else 256)
    else:
        block_w = min(ow, 256 if _interp_tiles() else 64)
        block_c = min(C, max(1, budget // (block_w * 16)), 64 if _interp_tiles() else 4)
    block_h = min(oh, max(1, budget // (block_c * block_w)))
    return dict(BLOCK_H=block_h, BLOCK_W=block_w, BLOCK_C=block_c, num_warps=warps)


def depthwise_space(f: Fields, elem_bytes: int) -> List[Dict[str, int]]:
    """Tiles no larger than the problem, and halo-aware: the input footprint (tile plus the
    dilated halo) stays within DW_FOOTPRINT, so large dilations get smaller spatial tiles; when
    no tile fits, the smallest footprints are kept."""
    kh, kw = ints(f["K"])
    dh, dw = ints(f["d"])
    sh, sw = ints(f["s"])
    oh, ow = ints(f["HW"])
    C = int(f["C"])
    cl = f["layout"] == "cl"
    scored = []
    for bc in _p2(1, min(C, 128)):
        for bw in _p2(1, min(ow, 128)):
            for bh in _p2(1, min(oh, 32)):
                tile = bh * bw * bc
                if not (min(256, C * oh * ow) <= tile <= 4096):
                    continue
                if cl and bc < min(8, C) or not cl and bw < min(16, ow):
                    continue
                foot = (((bh - 1) * sh + 1 + dh * (kh - 1))
                        * ((bw - 1) * sw + 1 + dw * (kw - 1)) * bc * elem_bytes)
                for warps in (2, 4, 8):
                    if tile // (32 * warps) in (2, 4, 8, 16):
                        scored.append((foot, dict(BLOCK_H=bh, BLOCK_W=bw, BLOCK_C=bc,
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
    P, M, K = _gemm_dims(f)
    interp = _interp_tiles()
    return dict(BLOCK_P=min(max(P, 16), 256 if interp else 64),
                BLOCK_M=min(max(M, 16), 128 if interp else 64),
                BLOCK_K=min(max(K, 16), 128 if interp else 64), num_warps=4, num_stages=3)


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


def fused_default(f: Fields, elem_bytes: int) -> Dict[str, int]:
    """A [BLOCK_P x BLOCK_M] output tile on 8 warps: 64 pixels x 128 outputs, or 128 pixels
    when M <= 64; the z tile [BLOCK_P x BLOCK_K] is computed in registers 16 channels at a
    time, beside the accumulator: wider z tiles spill once the taps' loads are in flight. At
    least 64 pixel rows keep sm_90's HGMMA (a warpgroup's minimum)."""
    P, M, CM = _fused_dims(f)
    interp = _interp_tiles()
    block_m = min(max(M, 16), 128)
    if interp:
        return dict(BLOCK_P=min(max(P, 16), 256), BLOCK_M=block_m,
                    BLOCK_K=min(max(CM, 16), 64), num_warps=4, num_stages=2)
    block_p = min(max(P, 16), 128 if block_m <= 64 else 64)
    return dict(BLOCK_P=block_p, BLOCK_M=block_m, BLOCK_K=16, num_warps=8, num_stages=2)


def fused_space(f: Fields, elem_bytes: int) -> List[Dict[str, int]]:
    P, M, CM = _fused_dims(f)
    out = []
    for bp in _p2(32, max(32, min(P, 128))):
        for bm in _p2(16, max(16, min(M, 256))):
            for bk in _p2(16, max(16, min(CM, 64))):
                for warps in (4, 8):
                    for stages in (1, 2, 3):
                        if (stages * bk * bm + bp * bk) * elem_bytes > SMEM_LIMIT:
                            continue
                        if not (bp * bm + bp * bk) // (32 * warps) <= 160:
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
