"""Benchmarks: Triton (fused, unfused) against the eager baseline class, cuDNN, the native
depthwise kernel and torch.compile, into a CSV with the columns of ../shared/DESIGN.md.

Timing is ``triton.testing.do_bench`` (median and 0.2 / 0.8 quantiles) on random data, the
input rotated over enough copies that L2 cannot hold them. Throughput is the op's *ideal*
bytes (GB/s) or FLOPs (TFLOP/s) over the measured time, the same numerator for every
provider, so the columns compare providers directly; pct_roofline is the cost model's floor
time on the named GPU over the measured time. Under the interpreter (``--interpret``) the same
pipeline runs on tiny shapes with a wall-clock timer: real as code, meaningless as speed.
"""
from __future__ import annotations

import contextlib
import csv
import datetime
import os
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
import triton
from torch import nn

import triton_dsd
from triton_dsd import _io, cost, ops
from triton_dsd.epilogue import Epilogue
from triton_dsd.problems import Problem

COLUMNS = ["op", "mode", "provider", "dtype", "layout", "dim", "N", "C", "m", "M", "H", "W", "K",
           "dilation", "stride", "ms_p50", "ms_p20", "ms_p80", "gb_s", "tflop_s", "pct_roofline",
           "peak_mem_mb", "gpu_name", "torch_version", "triton_version", "timestamp"]
#: the columns that say which measurement a row is (a re-measured row replaces its old one)
IDENTITY = ["op", "mode", "provider", "dtype", "layout", "dim", "N", "C", "m", "M", "H", "W",
            "K", "dilation", "stride", "gpu_name"]
#: the sizes of a row's problem (the plots vary one and hold the others)
SIZE_COLUMNS = ["N", "C", "m", "M", "H", "W", "K", "dilation", "stride"]
PROVIDERS = ("triton_fused", "triton_unfused", "eager", "eager_cudnn", "eager_native", "compile")
MODES = ("fwd", "bwd", "fwd+bwd", "step")
#: the decode step (one frame of N streams of a causal 1D layer, the conv state carried) is
#: the whole layer's mode: our one-launch step, the eager decode a user writes (conv over the
#: state and the frame, the 1x1, the state moved), and that eager decode under torch.compile
STEP_PROVIDERS = ("triton_fused", "eager", "compile")
OPS = ("dsd", "depthwise", "pointwise")
#: which providers exist for which op (the single-stage ops have one Triton kernel)
OP_PROVIDERS = {
    "dsd": PROVIDERS,
    "depthwise": ("triton_unfused", "eager", "eager_cudnn", "eager_native", "compile"),
    "pointwise": ("triton_unfused", "eager", "eager_cudnn", "compile"),
}
#: providers that only mean something on a CUDA device (cuDNN on / off)
CUDA_ONLY = ("eager_cudnn", "eager_native")


def providers_for(op: str, providers: Sequence[str], device: torch.device,
                  mode: str = "fwd") -> List[str]:
    """The requested providers that exist for ``op`` (and ``mode``: 'step' is the whole
    layer's, ``STEP_PROVIDERS``) on ``device`` (cuDNN ones need CUDA)."""
    if mode == "step":
        return [p for p in providers if op == "dsd" and p in STEP_PROVIDERS]
    return [p for p in providers if p in OP_PROVIDERS[op]
            and (device.type == "cuda" or p not in CUDA_ONLY)]


class SchemaError(ValueError):
    """A CSV that does not have our columns."""


def _module(op: str, provider: str, p: Problem) -> nn.Module:
    C, cm = p.C, p.C * p.m
    pad = p.padding
    two = p.dim == 2
    kw = dict(device=p.device, dtype=p.dtype)
    triton_side = provider.startswith("triton")
    if op == "dsd":
        if triton_side:
            cls = triton_dsd.DepthwiseSeparableDilatedConv2d if two else triton_dsd.DepthwiseSeparableDilatedConv1d
            return cls(C, p.M, p.K, p.dilation, pad, stride=p.stride, depth_multiplier=p.m,
                       fused=provider == "triton_fused", **kw)
        cls = (triton_dsd.EagerDepthwiseSeparableDilatedConv2d if two
               else triton_dsd.EagerDepthwiseSeparableDilatedConv1d)
        return cls(C, p.M, p.K, p.dilation, pad, stride=p.stride, depth_multiplier=p.m, **kw)
    if op == "depthwise":
        if triton_side:
            cls = triton_dsd.DepthwiseConv2d if two else triton_dsd.DepthwiseConv1d
            return cls(C, cm, p.K, p.stride, pad, p.dilation, **kw)
        conv = nn.Conv2d if two else nn.Conv1d
        return conv(C, cm, p.K, p.stride, pad, p.dilation, groups=C, **kw)
    if triton_side:
        return (triton_dsd.PointwiseConv2d if two else triton_dsd.PointwiseConv1d)(cm, p.M, **kw)
    return (nn.Conv2d if two else nn.Conv1d)(cm, p.M, 1, **kw)


def _flags(provider: str):
    if provider == "eager_cudnn":
        return torch.backends.cudnn.flags(enabled=True, benchmark=True)
    if provider == "eager_native":  # cuDNN off: PyTorch's own depthwise kernel
        return torch.backends.cudnn.flags(enabled=False)
    return contextlib.nullcontext()


def _inputs(op: str, p: Problem, copies: int) -> List[torch.Tensor]:
    """Random inputs of the op (x, or z for pointwise), in the problem's layout, several copies,
    generated on the device itself."""
    g = torch.Generator(device=p.device).manual_seed(0)
    H = p.H if p.dim == 2 else 1
    C = p.C * p.m if op == "pointwise" else p.C
    shape = (p.N, C, H, p.W) if op != "pointwise" else (p.N, C, *p.out_hw)
    out = []
    for _ in range(copies):
        t = torch.randn(*shape, generator=g, device=p.device).to(p.dtype)
        if p.layout == "cl":
            t = t.contiguous(memory_format=torch.channels_last)
        out.append(t if p.dim == 2 else t.squeeze(2))
    return out


def _copies(p: Problem, op: str) -> int:
    """Input copies to rotate through: enough to exceed the L2 (60 MB on H100/H200), at most 4
    (do_bench also flushes the L2 between repetitions)."""
    if p.device.type != "cuda":
        return 1
    H = p.H if p.dim == 2 else 1
    nbytes = p.N * p.C * p.m * H * p.W * p.dtype.itemsize
    return int(min(4, max(1, -(-60 * 2**20 // max(nbytes, 1)))))


def _rotating(items: Sequence) -> Callable[[], object]:
    """A callable returning the next of ``items`` on each call (inputs rotate over copies)."""
    at = {"i": 0}

    def nxt():
        at["i"] = (at["i"] + 1) % len(items)
        return items[at["i"]]
    return nxt


def _compiled(fn, device: torch.device):
    """torch.compile(fn) with a fresh dynamo state: the recompile limit is shared by every
    compiled function, and past it dynamo silently falls back to eager."""
    torch._dynamo.reset()
    return torch.compile(fn, backend="inductor" if device.type == "cuda" else "aot_eager")


def _step_case(provider: str, p: Problem) -> Callable[[], object]:
    """One decode frame of N = p.N streams through a causal 1D layer of the problem's sizes
    (its length is irrelevant), the state carried from call to call; frames rotate over
    copies generated on the device."""
    torch.manual_seed(0)
    layer = triton_dsd.DepthwiseSeparableDilatedConv1d(
        p.C, p.M, p.K, p.dilation, "causal", depth_multiplier=p.m, device=p.device,
        dtype=p.dtype)
    state = layer.init_state(p.N)
    g = torch.Generator(device=p.device).manual_seed(0)
    nxt = _rotating([torch.randn(p.N, p.C, generator=g, device=p.device).to(p.dtype)
                     for _ in range(4)])

    if provider == "triton_fused":
        def run():
            with torch.no_grad():
                return layer.step(nxt(), state)
        return run
    dw, pw = layer.depthwise, layer.pointwise
    weights = (dw.weight.detach().unsqueeze(2), dw.bias.detach(), pw.weight.detach().unsqueeze(3),
               pw.bias.detach(), p.dilation)
    fn = _compiled(ops.eager_step, p.device) if provider == "compile" else ops.eager_step
    empty = Epilogue()

    def run():
        with torch.no_grad():
            return fn(nxt(), state, *weights, empty)
    return run


def make_case(op: str, provider: str, mode: str, p: Problem) -> Callable[[], object]:
    """A no-argument callable running one timed iteration (inputs rotate between calls)."""
    if mode == "step":
        return _step_case(provider, p)
    torch.manual_seed(0)
    module = _module(op, provider, p)
    if provider == "compile":
        module = _compiled(module, p.device)
    xs = _inputs(op, p, _copies(p, op))
    if mode != "fwd":
        xs = [x.requires_grad_() for x in xs]

    if mode == "fwd":
        nxt = _rotating(xs)

        def run():
            with torch.no_grad(), _flags(provider):
                return module(nxt())
        return run
    with _flags(provider):
        ys = [module(x) for x in xs]
    dys = [torch.randn_like(y) for y in ys]
    if mode == "bwd":
        graphs = _rotating(list(zip(ys, dys)))

        def run():
            y, dy = graphs()
            with _flags(provider):
                y.backward(dy, retain_graph=True)
        return run
    pairs = _rotating(list(zip(xs, dys)))

    def run():
        x, dy = pairs()
        with _flags(provider):
            module(x).backward(dy)
    return run


#: do_bench warmup / repetition budgets in ms (the GPU script shortens them)
BENCH_MS = dict(warmup=25, rep=100)


def measure(fn: Callable[[], object], device: torch.device) -> Dict[str, float]:
    """ms at the median, 20th and 80th percentiles, and peak memory (MiB, GPU) of one call."""
    if device.type == "cuda":
        fn()  # warm: compile, autotune, cuDNN benchmark
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        fn()  # peak memory of one call (do_bench's own L2-flush buffer would inflate it)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        p50, p20, p80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8], **BENCH_MS)
        return dict(ms_p50=p50, ms_p20=p20, ms_p80=p80, peak_mem_mb=round(peak, 1))
    fn()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return dict(ms_p50=times[1], ms_p20=times[0], ms_p80=times[2], peak_mem_mb="")


def gpu_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu_interpreter"


def run(problems: Sequence[Problem], ops: Sequence[str], providers: Sequence[str],
        modes: Sequence[str], progress: Callable[[str], None] = print,
        on_problem: Optional[Callable[[List[dict]], None]] = None,
        failures: Optional[List[str]] = None) -> List[dict]:
    """Measure every (problem, op, mode, provider); ``on_problem`` gets each problem's rows as
    soon as they exist (the CLI appends them to the CSV, so an interrupted sweep keeps them).
    A Triton provider that raises is appended to ``failures`` (a baseline that cannot run a
    case is only reported)."""
    failures = [] if failures is None else failures
    rows = []
    for p in problems:
        first = len(rows)
        name = gpu_name(p.device)
        try:
            dev = cost.device_for(name)
        except KeyError:
            dev = None
        for op in ops:
            for mode in modes:
                if mode == "step" and p.dim != 1:  # a decode step is a causal 1D layer's
                    continue
                c = p.cost_of(mode)
                for prov in providers_for(op, providers, p.device, mode):
                    try:
                        fn = make_case(op, prov, mode, p)
                        m = measure(fn, p.device)
                    except Exception as e:  # noqa: BLE001 - reported, and counted for ours
                        # a baseline that cannot run a case (torch.compile on an odd build)
                        # is skipped; a Triton provider that fails is a bug: counted in
                        # `failures`, and the CLI exits non-zero
                        msg = (f"{op} {mode} {prov} {p.label()}: {type(e).__name__}: "
                               f"{str(e).splitlines()[0][:160] if str(e) else ''}")
                        if prov.startswith("triton"):
                            failures.append(msg)
                        progress(("  FAILED " if prov.startswith("triton") else "  skip ") + msg)
                        continue
                    b, fv, fm = cost.op_work(c, op, mode)
                    s = m["ms_p50"] / 1e3
                    floor = cost.roofline_ms(c, op, mode, dev) if dev else None
                    rows.append(dict(
                        op=op, mode=mode, provider=prov, dtype=str(p.dtype).replace("torch.", ""),
                        layout=p.layout, dim=p.dim, N=p.N, C=p.C, m=p.m, M=p.M, H=p.height, W=p.W,
                        K=p.K, dilation=p.dilation, stride=p.stride, **{k: _r(v) for k, v in m.items()},
                        gb_s=_r(b / s / 1e9), tflop_s=_r((fv + fm) / s / 1e12),
                        pct_roofline=_r(100 * floor / m["ms_p50"]) if floor else "",
                        gpu_name=name, torch_version=torch.__version__,
                        triton_version=triton.__version__,
                        timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(
                            timespec="seconds")))
                    progress(f"  {op:9s} {mode:7s} {prov:14s} {p.label():55s} "
                             f"{m['ms_p50']:9.4f} ms")
        if on_problem is not None and len(rows) > first:
            on_problem(rows[first:])
    return rows


def problem_of(row: dict) -> Problem:
    """The problem a CSV row measured (sizes and dtype; the device is irrelevant here)."""
    return Problem(N=int(row["N"]), C=int(row["C"]), M=int(row["M"]), H=int(row["H"]),
                   W=int(row["W"]), K=int(row["K"]), dilation=int(row["dilation"]),
                   stride=int(row["stride"]), m=int(row["m"]), dim=int(row["dim"]),
                   dtype=getattr(torch, row["dtype"]), layout=row["layout"])


def _r(v):
    return float(f"{v:.6g}") if isinstance(v, float) else v


#: columns that must hold numbers (the rest are labels)
_INT_COLUMNS = ("dim", "N", "C", "m", "M", "H", "W", "K", "dilation", "stride")
_FLOAT_COLUMNS = ("ms_p50", "ms_p20", "ms_p80", "gb_s", "tflop_s")


def read_csv(path: str) -> List[dict]:
    """Rows of one of our CSVs; SchemaError if its header is not ours, a size or time is not
    a number, or it is not text."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in COLUMNS if c not in header]
            extra = [c for c in header if c not in COLUMNS]
            if missing or extra:
                raise SchemaError(f"{path} is not a triton_dsd benchmark CSV: "
                                  f"{'missing columns ' + str(missing) if missing else ''}"
                                  f"{' unknown columns ' + str(extra) if extra else ''}")
            rows = list(reader)
    except UnicodeDecodeError as e:
        raise SchemaError(f"{path} is not a triton_dsd benchmark CSV (not UTF-8 text: {e})")
    for i, r in enumerate(rows, start=2):
        for col, kind in [(c, int) for c in _INT_COLUMNS] + [(c, float) for c in _FLOAT_COLUMNS]:
            try:
                kind(r[col])
            except (TypeError, ValueError):
                raise SchemaError(f"{path}, line {i}: column {col} is {r[col]!r}, not a "
                                  f"{kind.__name__}") from None
    return rows


def append_csv(path: str, rows: Sequence[dict]) -> int:
    """Merge rows into the CSV (a row with the same identity is replaced): under a lock on its
    folder (concurrent benches merge, never lose rows), then an atomic replace."""
    with _io.locked_dir(os.path.dirname(os.path.abspath(path))):
        return _merge_csv(path, rows)


def _merge_csv(path: str, rows: Sequence[dict]) -> int:
    existing = read_csv(path) if os.path.exists(path) else []
    ident = lambda r: tuple(str(r[k]) for k in IDENTITY)  # noqa: E731
    merged = {ident(r): r for r in existing}
    for r in rows:
        merged[ident(r)] = {k: r[k] for k in COLUMNS}

    def write(f):
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in merged.values():
            w.writerow(r)
    _io.atomic_write(path, write)
    return len(merged)


def summary(rows: Sequence[dict]) -> str:
    """A table: each (op, mode, problem) with every provider's time, speedup vs eager, % roofline."""
    groups: Dict[tuple, List[dict]] = {}
    for r in rows:
        key = tuple(str(r[k]) for k in IDENTITY if k != "provider")
        groups.setdefault(key, []).append(r)
    lines = [f"{'op':9s} {'mode':7s} {'shape':42s} {'provider':14s} {'ms':>9s} "
             f"{'vs eager':>8s} {'%roof':>6s} {'GB/s':>8s} {'TFLOP/s':>8s}"]
    for rs in groups.values():
        eager = next((float(r["ms_p50"]) for r in rs if r["provider"] == "eager"), None)
        for r in rs:
            sp = f"{r['H']}x{r['W']}" if str(r["dim"]) == "2" else f"L{r['W']}"
            mult = f" m{r['m']}" if str(r["m"]) != "1" else ""
            shape = (f"{r['dtype']} {r['layout']} {r['dim']}D N{r['N']} C{r['C']}{mult} M{r['M']} "
                     f"{sp} K{r['K']} d{r['dilation']} s{r['stride']}")
            sp = f"{eager / float(r['ms_p50']):7.2f}x" if eager else "      -"
            roof = f"{float(r['pct_roofline']):5.1f}%" if r["pct_roofline"] not in ("", None) else "     -"
            lines.append(f"{r['op']:9s} {r['mode']:7s} {shape:42s} {r['provider']:14s} "
                         f"{float(r['ms_p50']):9.4f} {sp:>8s} {roof:>6s} {float(r['gb_s']):8.1f} "
                         f"{float(r['tflop_s']):8.3f}")
    return "\n".join(lines)
