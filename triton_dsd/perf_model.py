"""An offline performance model: what each kernel would cost on an H200, from its sm_90 SASS.

No GPU is needed. For every case of a canonical set (H200-scale bf16 layers), the launches the
dispatcher would make are captured (:func:`_runtime.capture_launches`, default configs), each
kernel is compiled for sm_90 exactly as it would launch, and its SASS is read:

* registers, spill bytes, shared memory, and the occupancy they allow (resident warps per SM);
* the instruction mix (FFMA, HFMA2, HGMMA/HMMA, global loads by width, shared-memory ops, the
  rest), with every instruction weighted by the trip counts of the loops around it: loops are
  the backward branches of the SASS, matched in program order to the source loops whose trip
  counts the launch implies (:data:`TRIPS`);
* instructions issued per output, bytes in flight per SM, and the ideal HBM bytes and FLOPs.

Modeled time of a launch = the largest of

    ideal bytes / HBM bandwidth                          (each tensor argument touched once)
    issued thread-instructions / issue rate   x waves    (132 SMs x 4 schedulers x 1.98 GHz x 32)
    useful FMAs / FFMA peak                    x waves
    tensor-core FLOPs / tensor peak            x waves
    load bytes / (bytes in flight x 132 / latency)       (Little's law)

where ``waves`` charges the imbalance of the grid: the busiest SM runs ceil(programs / 132)
programs against an even share of programs / 132, and an SM with fewer than 4 warps resident
cannot use its 4 schedulers. The roofline of a launch is the largest of the bytes, FFMA and tensor
terms alone; a case's % of roofline is the sum of its launches' rooflines over the sum of
their modeled times.

What the model cannot see (say so wherever its numbers are quoted): cache hits and misses
(re-read data is assumed to come from L1/L2 for free: only ideal bytes reach HBM), bank
conflicts, dependency stalls beyond the bytes-in-flight term, instruction-cache misses,
branch divergence (predicated-off instructions are counted as issued, a skipped branch as
taken), clock throttling, launch overhead (~2-4 us per launch), and data-dependent trip
counts. Loops are matched to source loops by their order; a kernel whose SASS has another
number of loops than its trip list is flagged (``loops_matched`` False) and its unmatched
loops count once. The numbers are a model, never a measurement: ``scripts/gpu_check.sh``
times the same cases on a GPU when one is lent and records both side by side.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tempfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import triton

from triton_dsd import _runtime, compile_report, cost, dispatch, launchers, problems
from triton_dsd.epilogue import ACTIVATIONS, NORMS, Epilogue
from triton_dsd.kernels._common import MAX_UNROLL, ROW_LOOP_TAPS
from triton_dsd.kernels.depthwise import TAP_GROUP

# ----------------------------------------------------------------------------- the machine
#: H200 SXM (Hopper, sm_90): the constants every modeled number rests on
SMS = 132
SCHEDULERS = 4
CLOCK_HZ = 1.98e9
LANES = 32
ISSUE_RATE = SMS * SCHEDULERS * CLOCK_HZ * LANES  # thread-instructions / s (= FFMA / s)
HBM_BYTES_S = 4.3e12  # achievable (the 4.8 TB/s datasheet number is not reached by copies)
TENSOR_FLOPS = {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12, "float64": 67e12}
HMMA_SHARE = 0.5  # of the tensor peak that warp-level HMMA (mma.sync, no HGMMA) reaches on sm_90
LATENCY_S = 600e-9  # loaded HBM latency assumed for the Little's-law term
MAX_WARPS_SM = 64
MAX_BLOCKS_SM = 32
REGS_SM = 65536
SMEM_SM = 233472  # bytes of shared memory per SM (228 KiB)
SMEM_RESERVED = 1024  # per block, reserved by the driver


# ----------------------------------------------------------------------------- cases
@dataclasses.dataclass(frozen=True)
class Case:
    """One canonical case: a layer (``problems.Problem``) and what is run on it."""
    name: str
    problem: problems.Problem
    op: str  # dw_fwd, dw_dx, dw_dw, pw_fwd, fused_fwd, fused_fwd_bn, fused_fwd_bn_relu,
    # fused_fwd_ln, layer, step (one decode frame of N streams of the causal layer)

    def outputs(self) -> int:
        """The elements 'instructions per output' divides by: y for forward ops, dx for dX,
        pixel x channel products for dW (N*OH*OW*C*m), y for the layer (fwd+bwd)."""
        p = self.problem
        oh, ow = p.out_hw
        if self.op in ("dw_fwd", "dw_dw"):
            return p.N * p.C * p.m * oh * ow
        if self.op == "dw_dx":
            return p.N * p.C * p.height * p.W
        if self.op == "step":  # one frame of each stream
            return p.N * p.M
        return p.N * p.M * oh * ow


def _p(N, C, M, H, W, K, d=1, dim=2, layout="cl", **kw) -> problems.Problem:
    return problems.Problem(N=N, C=C, M=M, H=H, W=W, K=K, dilation=d, dim=dim, layout=layout,
                            dtype=torch.bfloat16, **kw)


def canonical_cases() -> List[Case]:
    """H200-scale bf16 layers: 2D NHWC/NCHW and 1D NLC/NCL, K 3..31 (1D: to 87), dilation
    1/2/4, C = M 128..1024, the fused layer (with epilogues), and the fused layer's forward +
    backward."""
    img = dict(N=8, C=128, M=128, H=56, W=56)
    seq = dict(N=8, C=256, M=256, H=1, W=4096, dim=1)
    c = [
        Case("dw fwd NHWC 56² C128 K3 d2", _p(**img, K=3, d=2), "dw_fwd"),
        Case("dw fwd NHWC 56² C128 K5", _p(**img, K=5), "dw_fwd"),
        Case("dw fwd NHWC 56² C128 K7", _p(**img, K=7), "dw_fwd"),
        Case("dw fwd NCHW 56² C128 K3 d2", _p(**img, K=3, d=2, layout="nchw"), "dw_fwd"),
        Case("dw fwd NHWC 28² C256 K3 d4", _p(8, 256, 256, 28, 28, K=3, d=4), "dw_fwd"),
        Case("dw fwd NHWC 14² C512 K13", _p(8, 512, 512, 14, 14, K=13), "dw_fwd"),
        Case("dw fwd NHWC 14² C512 K31", _p(8, 512, 512, 14, 14, K=31), "dw_fwd"),
        Case("dw fwd 1D NLC L4096 C256 K4", _p(**seq, K=4), "dw_fwd"),
        Case("dw fwd 1D NCL L4096 C256 K4", _p(**seq, K=4, layout="nchw"), "dw_fwd"),
        Case("dw fwd 1D NLC L4096 C256 K5 d4", _p(**seq, K=5, d=4), "dw_fwd"),
        Case("dw fwd 1D NLC L4096 C256 K31", _p(**seq, K=31), "dw_fwd"),
        # speech models' large 1D kernels (QuartzNet / Citrinet: K 11..87, dilation 1..4)
        Case("dw fwd 1D NLC L4096 C512 K33 d2", _p(**dict(seq, C=512, M=512), K=33, d=2),
             "dw_fwd"),
        Case("dw fwd 1D NCL L4096 C512 K87 d2",
             _p(**dict(seq, C=512, M=512), K=87, d=2, layout="nchw"), "dw_fwd"),
        Case("dw dX 1D NCL L4096 C512 K87 d2",
             _p(**dict(seq, C=512, M=512), K=87, d=2, layout="nchw"), "dw_dx"),
        Case("dw dX NHWC 56² C128 K3 d2", _p(**img, K=3, d=2), "dw_dx"),
        Case("dw dX NCHW 56² C128 K3", _p(**img, K=3, layout="nchw"), "dw_dx"),
        Case("dw dW NHWC 56² C128 K3 d2", _p(**img, K=3, d=2), "dw_dw"),
        Case("dw dW NHWC 56² C128 K7", _p(**img, K=7), "dw_dw"),
        Case("dw dW 1D NLC L4096 C256 K4", _p(**seq, K=4), "dw_dw"),
        Case("pw fwd NHWC 56² C128 M128", _p(**img, K=1), "pw_fwd"),
        Case("fused fwd NHWC 56² C=M=128 K3", _p(**img, K=3), "fused_fwd"),
        Case("fused fwd NHWC 56² C=M=128 K3 +BN+ReLU6/+BN", _p(**img, K=3), "fused_fwd_bn"),
        Case("fused fwd NCHW 56² C=M=128 K3", _p(**img, K=3, layout="nchw"), "fused_fwd"),
        Case("fused fwd NHWC 14² C=384 M=1536 K7 +LN/+GELU", _p(32, 384, 1536, 14, 14, K=7),
             "fused_fwd_ln"),
        Case("fused fwd NHWC 28² C=M=256 K3", _p(16, 256, 256, 28, 28, K=3), "fused_fwd"),
        Case("fused fwd NHWC 14² C=M=512 K3", _p(32, 512, 512, 14, 14, K=3), "fused_fwd"),
        Case("fused fwd NHWC 14² C=M=1024 K7", _p(32, 1024, 1024, 14, 14, K=7), "fused_fwd"),
        Case("fused fwd 1D NLC L4096 C=M=256 K4", _p(**seq, K=4), "fused_fwd"),
        Case("fused fwd 1D NLC L4096 C=M=512 K87 +BN+ReLU/-",
             _p(**dict(seq, C=512, M=512), K=87), "fused_fwd_bn_relu"),
        Case("layer fwd+bwd NHWC 56² C=M=128 K3", _p(**img, K=3), "layer"),
        Case("layer fwd+bwd 1D NLC L4096 C=M=256 K4", _p(**seq, K=4), "layer"),
    ]
    # decode steps: one frame of N streams (weight-bandwidth bound at small N)
    for n, cm, k, d in ((1, 256, 4, 1), (1, 1024, 4, 1), (16, 256, 4, 1), (16, 1024, 4, 1),
                        (256, 256, 4, 1), (256, 1024, 4, 1), (64, 512, 31, 1),
                        (8, 1024, 3, 8)):
        c.append(Case(f"step N{n} C=M={cm} K{k}" + (f" d{d}" if d > 1 else ""),
                      _p(n, cm, cm, 1, 1, K=k, d=d, dim=1), "step"))
    return c


def run_case(case: Case, t: Dict[str, torch.Tensor]) -> None:
    """Run (or, under capture, record) every launch of the case on tensors ``t``
    (``Problem.tensors``): the same calls the ops make."""
    p = case.problem
    L = launchers
    cl = p.layout == "cl"
    geo = (p.strides, p.pads, p.dilations)
    if case.op == "dw_fwd":
        L.depthwise_fwd(t["x"], t["dw"], t["db"], *geo, cl)
    elif case.op == "dw_dx":
        L.depthwise_bwd_input(t["dz"], t["dw"], t["x"], *geo, cl)
    elif case.op == "dw_dw":
        L.depthwise_bwd_weight(t["dz"], t["x"], t["dw"], *geo, True, False)
    elif case.op == "pw_fwd":
        L.pointwise_fwd(t["x"], t["pw"], t["pb"], cl)
    elif case.op == "fused_fwd":
        L.dsd_fwd(t["x"], t["dw"], t["db"], t["pw"], t["pb"], *geo, cl)
    elif case.op == "fused_fwd_bn":  # eval BN folded between and after, ReLU6 between
        cm, m = t["dw"].shape[0], t["pw"].shape[0]
        ones = lambda n: torch.ones(n, device=t["x"].device)  # noqa: E731
        epi = Epilogue(ones(cm), ones(cm) * 0.1, ACTIVATIONS["relu6"], ones(m), ones(m) * 0.1, 0)
        L.dsd_fwd(t["x"], t["dw"], t["db"], t["pw"], t["pb"], *geo, cl, epilogue=epi)
    elif case.op == "fused_fwd_bn_relu":  # eval BN folded between, ReLU between, nothing after
        cm = t["dw"].shape[0]
        ones = torch.ones(cm, device=t["x"].device)
        epi = Epilogue(ones, ones * 0.1, ACTIVATIONS["relu"])
        L.dsd_fwd(t["x"], t["dw"], t["db"], t["pw"], t["pb"], *geo, cl, epilogue=epi)
    elif case.op == "fused_fwd_ln":  # ConvNeXt: LayerNorm over channels between, GELU after
        cm = t["dw"].shape[0]
        epi = Epilogue(torch.ones(cm, device=t["x"].device), torch.zeros(cm, device=t["x"].device),
                       0, None, None, ACTIVATIONS["gelu"], NORMS["layer_norm"], 1e-6)
        L.dsd_fwd(t["x"], t["dw"], t["db"], t["pw"], t["pb"], *geo, cl, epilogue=epi)
    elif case.op == "step":  # one decode frame: x_t (N, C), the state (N, C, d*(K-1))
        x = t["x"].new_zeros(p.N, p.C)
        state = t["x"].new_zeros(p.N, p.C, p.dilation * (p.K - 1))
        L.dsd_step(x, state, t["dw"], t["db"], t["pw"], t["pb"], p.dilation, False)
    elif case.op == "layer":  # ops._dsd_backward's launches after the fused forward
        L.dsd_fwd(t["x"], t["dw"], t["db"], t["pw"], t["pb"], *geo, cl)
        z = L.depthwise_fwd(t["x"], t["dw"], t["db"], *geo, cl)
        dz = L.pointwise_bwd_input(t["dy"], t["pw"], cl)
        L.pointwise_bwd_weight(t["dy"], z, t["pw"], True, False)
        L.depthwise_bwd_input(dz, t["dw"], t["x"], *geo, cl)
        L.depthwise_bwd_weight(dz, t["x"], t["dw"], *geo, True, False)
    else:
        raise ValueError(f"unknown case op {case.op!r}")


# ----------------------------------------------------------------------------- trip counts
def _named(launch) -> Dict[str, object]:
    """The launch's arguments by parameter name (positional and keyword)."""
    names = launch.kernel.arg_names
    out = dict(zip(names, launch.args))
    out.update(launch.kwargs)
    return out


def _row_loop(a) -> List[int]:
    """The loop over kernel rows (none when KH == 1: a constexpr trip count of 1)."""
    return [int(a["KH"])] if a["KH"] > 1 else []


def _group_loop(a, transposed: bool) -> List[int]:
    """The loop over a wide kernel row's whole tap groups (``depthwise._window_row``: rows of
    more than ROW_LOOP_TAPS taps, TAP_GROUP taps a group for scalar columns, half for channel
    vectors; the input gradient's only where a group moves by whole dy columns); none for rows
    that unroll."""
    kw = int(a["KW"])
    S, D = int(a["STRIDE_W"]), int(a["DIL_W"])
    group = TAP_GROUP.value // (1 if a["BLOCK_C"] == 1 else 2)
    if kw <= ROW_LOOP_TAPS.value or (transposed and (group * D) % S):
        return []
    return [kw // group]


def _dw_fwd_trips(a) -> List[int]:
    if "BLOCK_R" in a:  # register windows: a row loop past MAX_UNROLL taps (its wide rows
        # loop over their tap groups)
        if a["KH"] * a["KW"] <= MAX_UNROLL:
            return []
        return _row_loop(a) + _group_loop(a, False)
    return _row_loop(a) if a["KH"] * a["KW"] > 25 else []  # the tiles of triton_dsd <= 0.3


def _dw_dx_trips(a) -> List[int]:
    if "BLOCK_R" in a:  # one row loop per depth-multiplier channel
        if a["KH"] * a["KW"] <= MAX_UNROLL:
            return []
        return (_row_loop(a) + _group_loop(a, True)) * int(a["MULT"])
    return _row_loop(a) if a["KH"] * a["KW"] * a["MULT"] > 12 else []


def _dw_dw_trips(a) -> List[int]:
    per = float(a["total_tiles"]) / max(1, math.ceil(a["total_tiles"] / a["tiles_per_split"]))
    if "BLOCK_T" in a:  # tiles outer, taps inner: one tile loop per split
        return [per] if a["tiles_per_split"] > 1 else []
    # taps outer (one loop over kh, KW unrolled tile loops inside), then the bias tile loop
    return _row_loop(a) + [per] * int(a["KW"]) + ([per] if a["HAS_BIAS"] else [])


def _pw_trips(a) -> List[int]:
    return [math.ceil(a["K"] / a["BLOCK_K"])]


def _pw_dw_trips(a) -> List[int]:
    if a["blocks_per_split"] == 1:  # Triton specialises an argument equal to 1: no loop
        return []
    n_splits = max(1, math.ceil(a["total_blocks"] / a["blocks_per_split"]))
    return [float(a["total_blocks"]) / n_splits]


def _fused_trips(a) -> List[int]:
    if int(a.get("WIN", 1)) > 1:  # register windows: the row loop (its wide rows loop over
        # their tap groups of channel vectors), then every M block
        return (_row_loop(a) + _group_loop(dict(a, BLOCK_C=a["BLOCK_K"]), False)
                + [math.ceil(a["M"] / a["BLOCK_M"])])
    if "UNROLL_KW" in a and not (a["UNROLL_KW"] and not (
            a["IDX64"] and a["BLOCK_P"] * a["BLOCK_K"] > 2048)):
        taps = [a["KH"] * a["KW"]] if a["KH"] * a["KW"] > 1 else []  # one tap an iteration
    else:
        taps = _row_loop(a)  # a row loop, each row's taps unrolled
    if a.get("Z_STATIONARY"):  # z once, then every M block
        return taps + [math.ceil(a["M"] / a["BLOCK_M"])]
    return [math.ceil(a["CM"] / a["BLOCK_K"])] + taps


def _step_trips(a) -> List[float]:
    """The decode step's loops: the taps past MAX_UNROLL (one loop a depth-multiplier channel);
    the state shift's row tiles (run by one program in M_SPLITS: weighted so) and, when a row
    takes several, its frame tiles; the M blocks of a split; the deterministic finish's sum
    over channel blocks (run at one arrival in n_cb: once on average)."""
    K, S = int(a["K"]), int(a["DIL"]) * (int(a["K"]) - 1)
    N, bn, bc = int(a["N"]), int(a["BLOCK_N"]), int(a["BLOCK_C"])
    splits = int(a["M_SPLITS"])
    out: List[float] = []
    if S > 0 and K - 1 > MAX_UNROLL.value:
        out += [K - 1] * int(a["MULT"])
    if S > 0:
        rows = N * bc / math.ceil(N / bn)  # a stream block's rows, on average
        if N > 1 or bc > int(a["BLOCK_ROWS"]):  # N == 1 is specialised: one tile, no loop
            out.append(math.ceil(rows / int(a["BLOCK_ROWS"])) / splits)
        frames = math.ceil((S - 1) / int(a["BLOCK_S"]))
        if frames > 1:
            out.append(frames)
    out.append(int(a["n_mb"]) / splits)
    if a["SPLIT_C"] and not a["ATOMIC"]:
        out.append(1.0)
    return out


def _finish_trips(a) -> List[int]:
    n = int(a["n_splits"])
    return [n] if n > 1 else []  # Triton specialises an argument equal to 1: no loop


#: kernel name -> the trip counts of its source loops, in program order, from its arguments
TRIPS: Dict[str, Callable[[dict], List[float]]] = {
    "depthwise_fwd_kernel": _dw_fwd_trips,
    "depthwise_bwd_input_kernel": _dw_dx_trips,
    "depthwise_bwd_weight_kernel": _dw_dw_trips,
    "pointwise_fwd_kernel": _pw_trips,
    "pointwise_bwd_weight_kernel": _pw_dw_trips,
    "dsd_fwd_kernel": _fused_trips,
    "splitk_reduce_kernel": _finish_trips,
    "dsd_step_kernel": _step_trips,
}


# ----------------------------------------------------------------------------- SASS reading
_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_TARGET = re.compile(r"0x([0-9a-f]+)")


@dataclasses.dataclass
class Instr:
    addr: int
    op: str
    args: str


def parse_sass(sass: str) -> List[Instr]:
    """The instructions of the (single) kernel in a cuobjdump -sass listing."""
    out = []
    for m in _INSTR.finditer(sass):
        out.append(Instr(int(m.group(1), 16), m.group(3), m.group(4)))
    return out


def loops(instrs: Sequence[Instr]) -> List[Tuple[int, int]]:
    """(start, end) address ranges of the loops: every backward branch to an earlier address
    (the self-branch after EXIT is not a loop), sorted in program order (by start, outer
    first)."""
    out = set()
    for ins in instrs:
        if ins.op.startswith("BRA"):
            m = _TARGET.search(ins.args)
            if m:
                target = int(m.group(1), 16)
                if target < ins.addr:
                    out.add((target, ins.addr))
    return sorted(out, key=lambda r: (r[0], -r[1]))


def _category(op: str) -> str:
    base = op.split(".")[0]
    if base in ("FFMA", "FFMA2"):
        return "ffma"
    if base in ("HFMA2", "HFMA"):
        return "hfma2"
    if base in ("HGMMA", "WGMMA"):
        return "hgmma"
    if base == "HMMA":
        return "hmma"
    if base in ("FMUL", "FADD", "FMNMX", "MUFU"):
        return "fp_other"
    if base == "LDG":
        return "ldg" + str(_load_bytes(op))
    if base == "LDGSTS":
        return "ldgsts"
    if base in ("STG", "RED", "ATOM", "ATOMG", "REDG"):
        return "store_atomic"
    if base in ("LDS", "STS", "LDSM", "STSM", "ATOMS"):
        return "shared"
    if base in ("F2F", "F2FP", "I2F", "F2I", "PRMT", "HADD2", "HMUL2"):
        return "convert"
    if base in ("IMAD", "IADD3", "LEA", "SHF", "LOP3", "ISETP", "IABS", "I2FP", "SEL", "MOV",
                "IMNMX", "SGXT", "BMSK", "FSEL", "ISCADD", "POPC", "FLO", "VIADD", "VIMNMX"):
        return "int_other"
    return "other"


def _load_bytes(op: str) -> int:
    for width, b in ((".128", 16), (".64", 8), (".U16", 2), (".S16", 2), (".U8", 1), (".S8", 1)):
        if width in op:
            return b
    return 4


def weigh(instrs: Sequence[Instr], trips: Sequence[float]) -> Tuple[Dict[str, float], float,
                                                                    bool, float]:
    """(weighted instruction mix per thread, weighted total, loops matched, global-load bytes
    per thread of the heaviest loop body or straight-line region)."""
    spans = loops(instrs)
    matched = len(spans) == len(trips)
    trip_of = {span: (trips[i] if i < len(trips) else 1.0) for i, span in enumerate(spans)}
    mix: Dict[str, float] = {}
    region_load: Dict[Optional[Tuple[int, int]], float] = {}
    region_weight: Dict[Optional[Tuple[int, int]], float] = {}
    total = 0.0
    for ins in instrs:
        if ins.op == "BRA" and _TARGET.search(ins.args) and \
                int(_TARGET.search(ins.args).group(1), 16) == ins.addr:
            continue  # the trap loop after EXIT
        inside = [s for s in spans if s[0] <= ins.addr <= s[1]]
        w = 1.0
        for s in inside:
            w *= trip_of[s]
        cat = _category(ins.op)
        mix[cat] = mix.get(cat, 0.0) + w
        total += w
        innermost = min(inside, key=lambda s: s[1] - s[0]) if inside else None
        region_weight[innermost] = w
        if cat.startswith("ldg") or cat == "ldgsts":
            b = 16 if cat == "ldgsts" and ".128" in ins.op else (
                _load_bytes(ins.op) if cat == "ldgsts" else int(cat[3:]))
            region_load[innermost] = region_load.get(innermost, 0.0) + b
    if region_load:
        heaviest = max(region_load, key=lambda r: region_load[r] * region_weight.get(r, 1.0))
        in_flight = region_load[heaviest]
    else:
        in_flight = 0.0
    return mix, total, matched, in_flight


# ----------------------------------------------------------------------------- per launch
def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _valid_taps(out_n: int, in_n: int, k: int, s: int, p: int, d: int) -> int:
    """Sum over output positions of the taps that land inside the input (one axis)."""
    return sum(sum(1 for j in range(k) if 0 <= o * s - p + j * d < in_n) for o in range(out_n))


def _dw_macs(a, x_shape, y_shape) -> int:
    """Useful depthwise multiply-adds: per output element, the taps inside the input."""
    N, _, H, W = x_shape
    _, C_out, OH, OW = y_shape
    th = _valid_taps(OH, H, a["KH"], a["STRIDE_H"], a["pad_h"], a["DIL_H"])
    tw = _valid_taps(OW, W, a["KW"], a["STRIDE_W"], a["pad_w"], a["DIL_W"])
    return N * C_out * th * tw


def _work(name: str, a: dict) -> Tuple[float, float]:
    """(useful FFMA-path multiply-adds, tensor-core FLOPs) of one launch."""
    if name == "depthwise_fwd_kernel":
        return _dw_macs(a, a["x_ptr"].shape, a["y_ptr"].shape), 0.0
    if name == "depthwise_bwd_input_kernel":
        return _dw_macs(a, a["dx_ptr"].shape, a["dy_ptr"].shape), 0.0
    if name == "depthwise_bwd_weight_kernel":
        return _dw_macs(a, a["x_ptr"].shape, a["dy_ptr"].shape), 0.0
    if name == "pointwise_fwd_kernel":
        x = a["x_ptr"]
        n_pix = x.numel() // x.shape[1]
        return 0.0, 2.0 * n_pix * a["K"] * a["M"]
    if name == "pointwise_bwd_weight_kernel":
        x = a["x_ptr"]
        n_pix = x.numel() // x.shape[1]
        return 0.0, 2.0 * n_pix * a["K"] * a["M"]
    if name == "dsd_step_kernel":
        n, cm, m = a["N"], a["wd_ptr"].shape[0], a["M"]
        return float(n * cm * a["K"]), 2.0 * n * cm * m
    if name == "dsd_fwd_kernel":
        x, y = a["x_ptr"], a["y_ptr"]
        z_shape = (y.shape[0], a["CM"], y.shape[2], y.shape[3])
        n_pix = y.numel() // y.shape[1]
        return _dw_macs(a, x.shape, z_shape), 2.0 * n_pix * a["CM"] * a["M"]
    return 0.0, 0.0


@dataclasses.dataclass
class LaunchModel:
    kernel: str
    config: str
    programs: int
    warps: int
    regs: int
    spill_bytes: int
    shared_bytes: int
    resident_warps: int
    waves: float
    instr_per_thread: float
    thread_instr: float
    mix: Dict[str, float]
    loops_matched: bool
    bytes_in_flight_sm: float
    ideal_bytes: float
    ffma_macs: float
    tensor_flops: float
    t_bytes: float
    t_issue: float
    t_ffma: float
    t_tensor: float
    t_latency: float
    modeled_s: float
    roofline_s: float
    bound: str


def occupancy(regs: int, warps: int, shared: int) -> Tuple[int, int]:
    """(resident programs per SM, resident warps per SM) from registers (allocated per warp
    in units of 256), shared memory and warps."""
    regs_warp = math.ceil(max(regs, 1) * LANES / 256) * 256
    by_regs = REGS_SM // (regs_warp * warps)
    by_smem = SMEM_SM // (shared + SMEM_RESERVED) if shared else MAX_BLOCKS_SM
    by_warps = MAX_WARPS_SM // warps
    blocks = max(0, min(by_regs, by_smem, by_warps, MAX_BLOCKS_SM))
    return blocks, blocks * warps


def model_launch(launch, stats: dict, sass: str, dtype: torch.dtype) -> LaunchModel:
    """The model of one captured launch, given its cubin's resource usage and SASS."""
    name = launch.kernel.fn.__name__
    a = _named(launch)
    warps = int(launch.kwargs.get("num_warps", 4))
    programs = 1
    for g in launch.grid:
        programs *= int(g)
    trips = TRIPS.get(name, lambda _a: [])(a)
    mix, per_thread, matched, load_bytes = weigh(parse_sass(sass), trips)
    threads = programs * warps * LANES
    thread_instr = per_thread * threads
    blocks, resident = occupancy(stats["regs"], warps, stats["shared_bytes"])
    # the busiest SM runs ceil(programs / SMS) programs; with fewer than 4 warps resident
    # on it, its 4 schedulers cannot all issue
    per_sm = math.ceil(programs / SMS)
    active = min(per_sm, max(blocks, 1)) * warps
    waves = per_sm / (programs / SMS) * 4 / min(4, active)
    # loads in flight: the warps an SM actually holds (a small grid leaves SMs part empty)
    in_flight = min(resident, active) * LANES * load_bytes
    ideal = 0.0
    seen = set()
    for v in launch.args:
        if isinstance(v, torch.Tensor) and v.untyped_storage().data_ptr() not in seen:
            seen.add(v.untyped_storage().data_ptr())
            ideal += _tensor_bytes(v)
    if name == "dsd_step_kernel":  # not the workspace, nor the whole state: the step's floor
        wd = a["wd_ptr"]
        ideal = float(cost.step_cost(
            int(a["N"]), int(a["C"]), int(a["M"]), int(a["K"]), int(a["DIL"]), int(a["MULT"]),
            a["bd_ptr"] is not None, wd.element_size()).bytes_fused)
    macs, tflops = _work(name, a)
    peak = TENSOR_FLOPS[str(dtype).replace("torch.", "")]
    if mix.get("hmma") and not mix.get("hgmma"):
        peak *= HMMA_SHARE  # warp-level mma.sync on Hopper
    t = dict(bytes=ideal / HBM_BYTES_S, issue=thread_instr / ISSUE_RATE * waves,
             ffma=macs / ISSUE_RATE * waves, tensor=tflops / peak * waves,
             latency=(ideal / (in_flight * SMS / LATENCY_S)) if in_flight else 0.0)
    modeled = max(t.values())
    roof = max(t["bytes"], macs / ISSUE_RATE, tflops / peak)
    cfg = ",".join(f"{k}={v}" for k, v in launch.kwargs.items()
                   if k.startswith("BLOCK_") or k in ("num_warps", "num_stages"))
    return LaunchModel(
        kernel=name, config=cfg, programs=programs, warps=warps, regs=stats["regs"],
        spill_bytes=stats["stack_bytes"] + stats["local_bytes"],
        shared_bytes=stats["shared_bytes"], resident_warps=resident, waves=round(waves, 3),
        instr_per_thread=per_thread, thread_instr=thread_instr, mix=mix, loops_matched=matched,
        bytes_in_flight_sm=in_flight, ideal_bytes=ideal, ffma_macs=macs, tensor_flops=tflops,
        t_bytes=t["bytes"], t_issue=t["issue"], t_ffma=t["ffma"], t_tensor=t["tensor"],
        t_latency=t["latency"], modeled_s=modeled, roofline_s=roof,
        bound=max(t, key=t.get))


def _sass_and_stats(launch, arch: int, out_dir: str) -> Tuple[dict, str]:
    path = os.path.join(out_dir, f"{launch.kernel.fn.__name__}_{abs(hash(repr(launch.kwargs)))}"
                                 f"_sm{arch}.cubin")
    return compile_report.compile_launch(launch.kernel, launch.args, launch.kwargs, arch, path)


# ----------------------------------------------------------------------------- per case
@dataclasses.dataclass
class CaseModel:
    case: str
    op: str
    outputs: int
    launches: List[LaunchModel]
    error: str = ""

    @property
    def modeled_s(self) -> float:
        return sum(x.modeled_s for x in self.launches)

    @property
    def roofline_s(self) -> float:
        return sum(x.roofline_s for x in self.launches)

    @property
    def pct_roofline(self) -> float:
        return 100.0 * self.roofline_s / self.modeled_s if self.modeled_s else 0.0

    @property
    def instr_per_output(self) -> float:
        return sum(x.thread_instr for x in self.launches) / max(1, self.outputs)

    @property
    def spills(self) -> int:
        return sum(x.spill_bytes for x in self.launches)

    measured_s: Optional[float] = None  # on a GPU (``triton-dsd model --measure``)

    def as_dict(self) -> dict:
        return dict(case=self.case, op=self.op, outputs=self.outputs, error=self.error,
                    measured_us=None if self.measured_s is None else self.measured_s * 1e6,
                    modeled_us=self.modeled_s * 1e6, roofline_us=self.roofline_s * 1e6,
                    pct_roofline=self.pct_roofline, instr_per_output=self.instr_per_output,
                    spill_bytes=self.spills,
                    launches=[dataclasses.asdict(x) for x in self.launches])


def model_case(case: Case, arch: int = 90, out_dir: Optional[str] = None) -> CaseModel:
    """Capture the case's launches (default configs) and model each one."""
    if _runtime.INTERPRET:
        raise RuntimeError("the performance model compiles for the GPU: run it with "
                           "TRITON_INTERPRET unset (`triton-dsd model` re-launches itself)")
    tmp = out_dir or tempfile.mkdtemp(prefix="triton_dsd_model_")
    try:
        t = case.problem.tensors()
        with _runtime.capture_launches() as launches, dispatch.defaults_only():
            run_case(case, t)
        models = []
        for rec in launches:
            stats, sass = _sass_and_stats(rec, arch, tmp)
            models.append(model_launch(rec, stats, sass, case.problem.dtype))
        return CaseModel(case.name, case.op, case.outputs(), models)
    except Exception as e:  # noqa: BLE001 - a case that fails is a row that says why
        return CaseModel(case.name, case.op, case.outputs(), [],
                         error=f"{type(e).__name__}: {e}"[:300])


def measure(case: Case, device: str = "cuda") -> float:
    """Seconds per run of the case's launches on a GPU (``triton.testing.do_bench`` median),
    with the same default configs the model reads: the calibration the model lacks."""
    import triton.testing

    prob = dataclasses.replace(case.problem, device=torch.device(device))
    t = prob.tensors()
    with dispatch.defaults_only():
        return triton.testing.do_bench(lambda: run_case(case, t)) * 1e-3


def run(only: Optional[str] = None, arch: int = 90) -> List[CaseModel]:
    """Model every canonical case (or those whose name contains ``only``)."""
    cases = [c for c in canonical_cases() if only is None or only in c.name]
    return [model_case(c, arch) for c in cases]


# ----------------------------------------------------------------------------- output
def format_table(models: Sequence[CaseModel], baseline: Optional[Dict[str, dict]] = None) -> str:
    """A Markdown table; with ``baseline`` (case -> as_dict of an earlier run), before/after."""
    head = ["case", "kernels (regs, warps)", "spill B", "instr/output", "bound",
            "modeled us", "roofline us", "% roofline"]
    if baseline:
        head += ["before instr/output", "before us", "before %"]
    measured = any(m.measured_s is not None for m in models)
    if measured:
        head += ["measured us", "measured / modeled"]
    body = []
    for m in models:
        if m.error:
            body.append([m.case, "ERROR " + m.error[:120]] + [""] * (len(head) - 2))
            continue
        ks = "; ".join(f"{x.kernel.replace('_kernel', '')} ({x.regs}r, {x.warps}w)"
                       + ("" if x.loops_matched else " loops?") for x in m.launches)
        bound = max(m.launches, key=lambda x: x.modeled_s).bound
        row = [m.case, ks, str(m.spills), f"{m.instr_per_output:.1f}", bound,
               f"{m.modeled_s * 1e6:.1f}", f"{m.roofline_s * 1e6:.1f}", f"{m.pct_roofline:.0f}%"]
        if baseline:
            b = baseline.get(m.case)
            row += ([f"{b['instr_per_output']:.1f}", f"{b['modeled_us']:.1f}",
                     f"{b['pct_roofline']:.0f}%"] if b and not b.get("error") else ["", "", ""])
        if measured:
            row += ([f"{m.measured_s * 1e6:.1f}", f"{m.measured_s / m.modeled_s:.2f}"]
                    if m.measured_s is not None else ["", ""])
        body.append(row)
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(head), sep] + [fmt(b) for b in body])


def to_json(models: Sequence[CaseModel]) -> str:
    meta = dict(model="triton_dsd.perf_model", gpu="H200 (modeled, sm_90 SASS)",
                triton=triton.__version__, torch=torch.__version__,
                constants=dict(sms=SMS, issue_rate=ISSUE_RATE, hbm_bytes_s=HBM_BYTES_S,
                               tensor_flops=TENSOR_FLOPS, latency_s=LATENCY_S))
    return json.dumps(dict(meta=meta, cases=[m.as_dict() for m in models]), indent=1)


def read_json(path: str) -> Dict[str, dict]:
    """case name -> case dict of a JSON written by :func:`to_json`."""
    with open(path) as f:
        data = json.load(f)
    return {c["case"]: c for c in data["cases"]}


def figure(models: Sequence[CaseModel], path: str,
           baseline: Optional[Dict[str, dict]] = None) -> None:
    """Modeled % of roofline per case (and the baseline's, when given), as a bar chart."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [m for m in models if not m.error]
    names = [m.case for m in ok]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(ok) + 1.5))
    ys = range(len(ok))
    if baseline:
        before = [baseline.get(n, {}).get("pct_roofline", 0.0) for n in names]
        ax.barh([y + 0.2 for y in ys], before, height=0.4, label="before", color="#bbbbbb")
        ax.barh([y - 0.2 for y in ys], [m.pct_roofline for m in ok], height=0.4, label="now",
                color="#1f77b4")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=2, frameon=False)
    else:
        ax.barh(list(ys), [m.pct_roofline for m in ok], color="#1f77b4")
    ax.set_yticks(list(ys))
    ax.set_yticklabels(names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("modeled % of roofline (H200 model from sm_90 SASS; not a measurement)")
    ax.set_title(f"triton_dsd performance model, bf16, default configs (Triton {triton.__version__})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
