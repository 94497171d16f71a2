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
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
import triton
from torch import nn

from triton_dsd import cost
from triton_dsd.problems import Problem

COLUMNS = ["op", "mode", "provider", "dtype", "layout", "N", "C", "M", "H", "W", "K", "dilation",
           "stride", "ms_p50", "ms_p20", "ms_p80", "gb_s", "tflop_s", "pct_roofline",
           "peak_mem_mb", "gpu_name", "torch_version", "triton_version", "timestamp"]
IDENTITY = ["op", "mode", "provider", "dtype", "layout", "N", "C", "M", "H", "W", "K", "dilation",
            "stride", "gpu_name"]
PROVIDERS = ("triton_fused", "triton_unfused", "eager", "eager_cudnn", "eager_native", "compile")
MODES = ("fwd", "bwd", "fwd+bwd")
OPS = ("dsd", "depthwise", "pointwise")
#: which providers exist for which op (the single-stage ops have one Triton kernel)
OP_PROVIDERS = {
    "dsd": PROVIDERS,
    "depthwise": ("triton_unfused", "eager", "eager_cudnn", "eager_native", "compile"),
    "pointwise": ("triton_unfused", "eager", "eager_cudnn", "compile"),
}


class SchemaError(ValueError):
    """A CSV that does not have our columns."""


def _module(op: str, provider: str, p: Problem) -> nn.Module:
    import triton_dsd
    C, cm = p.C, p.C * p.m
    pad = "same" if p.stride == 1 else (p.dilation * (p.K - 1)) // 2
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


def make_case(op: str, provider: str, mode: str, p: Problem) -> Callable[[], object]:
    """A no-argument callable running one timed iteration (inputs rotate between calls)."""
    torch.manual_seed(0)
    module = _module(op, provider, p)
    if provider == "compile":
        # a fresh dynamo state per case: the recompile limit is shared by every compiled module,
        # and past it dynamo silently falls back to eager
        torch._dynamo.reset()
        backend = "inductor" if p.device.type == "cuda" else "aot_eager"
        module = torch.compile(module, backend=backend)
    xs = _inputs(op, p, _copies(p, op))
    if mode != "fwd":
        xs = [x.requires_grad_() for x in xs]
    state = {"i": 0}

    def nxt():
        state["i"] = (state["i"] + 1) % len(xs)
        return xs[state["i"]]

    if mode == "fwd":
        def run():
            with torch.no_grad(), _flags(provider):
                return module(nxt())
        return run
    with _flags(provider):
        ys = [module(x) for x in xs]
    dys = [torch.randn_like(y) for y in ys]
    if mode == "bwd":
        def run():
            i = state["i"] = (state["i"] + 1) % len(ys)
            with _flags(provider):
                ys[i].backward(dys[i], retain_graph=True)
        return run

    def run():
        x = nxt()
        with _flags(provider):
            module(x).backward(dys[state["i"]])
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
        on_problem: Optional[Callable[[List[dict]], None]] = None) -> List[dict]:
    """Measure every (problem, op, mode, provider); ``on_problem`` gets each problem's rows as
    soon as they exist (the CLI appends them to the CSV, so an interrupted sweep keeps them)."""
    rows = []
    for p in problems:
        first = len(rows)
        c = cost.layer_cost(p.N, p.C, p.M, p.H if p.dim == 2 else 1, p.W, p.kernel,
                            p.dilations, p.strides, "same" if p.stride == 1 else
                            ((p.dilations[0] * (p.kernel[0] - 1)) // 2,
                             (p.dilations[1] * (p.kernel[1] - 1)) // 2),
                            p.m, True, p.dtype.itemsize)
        name = gpu_name(p.device)
        try:
            dev = cost.device_for(name)
        except KeyError:
            dev = None
        for op in ops:
            for mode in modes:
                for prov in providers:
                    if prov not in OP_PROVIDERS[op]:
                        continue
                    try:
                        fn = make_case(op, prov, mode, p)
                        m = measure(fn, p.device)
                    except Exception as e:  # a provider that cannot run this case: say so
                        progress(f"  skip {op} {mode} {prov} {p.label()}: {type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:120] if str(e) else ''}")
                        continue
                    b, fv, fm = cost.op_work(c, op, mode)
                    s = m["ms_p50"] / 1e3
                    floor = cost.roofline_ms(c, op, mode, dev) if dev else None
                    rows.append(dict(
                        op=op, mode=mode, provider=prov, dtype=str(p.dtype).replace("torch.", ""),
                        layout=p.layout, N=p.N, C=p.C, M=p.M, H=p.H if p.dim == 2 else 1, W=p.W,
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


def _r(v):
    return float(f"{v:.6g}") if isinstance(v, float) else v


def read_csv(path: str) -> List[dict]:
    """Rows of one of our CSVs; SchemaError if its header is not ours."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in COLUMNS if c not in header]
        extra = [c for c in header if c not in COLUMNS]
        if missing or extra:
            raise SchemaError(f"{path} is not a triton_dsd benchmark CSV: "
                              f"{'missing columns ' + str(missing) if missing else ''}"
                              f"{' unknown columns ' + str(extra) if extra else ''}")
        return list(reader)


def append_csv(path: str, rows: Sequence[dict]) -> int:
    """Merge rows into the CSV (a row with the same identity is replaced), atomically."""
    existing = read_csv(path) if os.path.exists(path) else []
    ident = lambda r: tuple(str(r[k]) for k in IDENTITY)  # noqa: E731
    merged = {ident(r): r for r in existing}
    for r in rows:
        merged[ident(r)] = {k: r[k] for k in COLUMNS}
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp_", suffix=".csv")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            for r in merged.values():
                w.writerow(r)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
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
            shape = (f"{r['dtype']} {r['layout']} N{r['N']} C{r['C']} M{r['M']} {r['H']}x{r['W']} "
                     f"K{r['K']} d{r['dilation']} s{r['stride']}")
            sp = f"{eager / float(r['ms_p50']):7.2f}x" if eager else "      -"
            roof = f"{float(r['pct_roofline']):5.1f}%" if r["pct_roofline"] not in ("", None) else "     -"
            lines.append(f"{r['op']:9s} {r['mode']:7s} {shape:42s} {r['provider']:14s} "
                         f"{float(r['ms_p50']):9.4f} {sp:>8s} {roof:>6s} {float(r['gb_s']):8.1f} "
                         f"{float(r['tflop_s']):8.3f}")
    return "\n".join(lines)
