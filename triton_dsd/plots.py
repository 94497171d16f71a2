"""Figures from the benchmark CSV (and the cost model), written atomically as PNG.

For each (GPU, op, mode, dtype, layout) and each swept axis (K, dilation, C; for decode steps N
and C): throughput (GB/s for the depthwise op and decode steps, TFLOP/s for the pointwise op
and the whole layer) with one line per
provider, the eager baseline always drawn, the roofline as a dashed line, and a speedup panel
(eager time / provider time: above 1 is faster than eager). Titles name the GPU, dtype, layout.
"""
from __future__ import annotations

import os
from collections import Counter, defaultdict
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from triton_dsd import _io, bench, cost  # noqa: E402

AXES = ("K", "dilation", "C")
#: a decode step is weight-bandwidth bound: its figures are GB/s against the streams N and C
STEP_AXES = ("N", "C")
STYLE = {
    "triton_fused": dict(color="#d62728", marker="o", lw=2.2),
    "triton_unfused": dict(color="#ff7f0e", marker="s", lw=1.8),
    "eager": dict(color="#1f77b4", marker="^", lw=2.2),
    "eager_cudnn": dict(color="#17becf", marker="v", lw=1.2, ls="--"),
    "eager_native": dict(color="#9467bd", marker="<", lw=1.2, ls="--"),
    "compile": dict(color="#2ca02c", marker="D", lw=1.5),
}


def _save(fig, path: str) -> str:
    """Write a figure atomically, with the umask's permissions (``_io.atomic_write``)."""
    try:
        return _io.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120,
                                                            bbox_inches="tight"), binary=True)
    finally:
        plt.close(fig)


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(s))


def _roofline(row: dict, op: str, mode: str) -> Optional[float]:
    """The throughput the roofline allows at this shape (same units as the plotted metric)."""
    try:
        dev = cost.device_for(row["gpu_name"])
    except KeyError:
        return None
    lc = bench.problem_of(row).cost_of(mode)
    floor_s = cost.roofline_ms(lc, op, mode, dev) / 1e3
    b, fv, fm = cost.op_work(lc, op, mode)
    if op == "depthwise" or mode == "step":
        return b / floor_s / 1e9
    return (fv + fm) / floor_s / 1e12


def figures(rows: Sequence[dict], out_dir: str, label: str = "") -> List[str]:
    """Every figure the rows support; returns the written paths."""
    groups: Dict[tuple, List[dict]] = defaultdict(list)
    for r in rows:  # 1D and 2D rows are separate figures
        groups[(r["gpu_name"], r["op"], r["mode"], r["dtype"], r["layout"], str(r["dim"]))].append(r)
    written = []
    for (gpu, op, mode, dtype, layout, dim), rs in groups.items():
        metric, unit = (("gb_s", "GB/s") if op == "depthwise" or mode == "step"
                        else ("tflop_s", "TFLOP/s"))
        for axis in (STEP_AXES if mode == "step" else AXES):
            others = [a for a in bench.SIZE_COLUMNS if a != axis]
            # hold the other sizes at their most common values
            fixed = {a: Counter(r[a] for r in rs).most_common(1)[0][0] for a in others}
            sel = [r for r in rs if all(r[a] == fixed[a] for a in others)]
            xs = sorted({int(r[axis]) for r in sel})
            if len(xs) < 2:
                continue
            by_prov: Dict[str, Dict[int, dict]] = defaultdict(dict)
            for r in sel:
                by_prov[r["provider"]][int(r[axis])] = r
            if "eager" not in by_prov:
                continue  # the baseline must be on every figure
            fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7.5, 6.5), sharex=True,
                                          gridspec_kw=dict(height_ratios=[2.2, 1]))
            for prov in sorted(by_prov, key=lambda p: list(STYLE).index(p) if p in STYLE else 99):
                pts = by_prov[prov]
                px = [x for x in xs if x in pts]
                ax.plot(px, [float(pts[x][metric]) for x in px], label=prov, **STYLE.get(prov, {}))
                eager = by_prov["eager"]
                sx = [x for x in px if x in eager]
                ax2.plot(sx, [float(eager[x]["ms_p50"]) / float(pts[x]["ms_p50"]) for x in sx],
                         **STYLE.get(prov, {}))
            roof = [(x, _roofline(by_prov["eager"][x], op, mode)) for x in xs
                    if x in by_prov["eager"]]
            roof = [(x, v) for x, v in roof if v]
            if roof:
                ax.plot([x for x, _ in roof], [v for _, v in roof], color="k", ls=":", lw=1.5,
                        label="roofline (datasheet)")
            ax.set_ylabel(f"throughput [{unit}]")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, ncol=2)
            ax2.axhline(1.0, color="#1f77b4", lw=1)
            ax2.set_ylabel("speedup vs eager")
            ax2.set_xlabel({"K": "kernel size K", "dilation": "dilation d", "C": "channels C",
                            "N": "streams N (one frame each)"}[axis])
            ax2.grid(alpha=0.3)
            if axis == "C":
                ax2.set_xscale("log", base=2)
            ax2.set_xticks(xs)
            ax2.set_xticklabels([str(x) for x in xs])
            fixed_txt = ", ".join(f"{a}={fixed[a]}" for a in others
                                  if a != "H" or dim == "2")
            ax.set_title(f"{label}{op} {mode} on {gpu}, {dim}D, {dtype}, {layout}\n{fixed_txt}",
                         fontsize=10)
            name = f"{_slug(gpu)}_{op}_{_slug(mode)}_{dim}d_{dtype}_{layout}_vs_{axis}.png"
            written.append(_save(fig, os.path.join(out_dir, name)))
    return written


def cost_model_figure(out_dir: str, N: int = 8, C: int = 128, M: int = 128, H: int = 56,
                      W: int = 56, dtype_bytes: int = 2) -> str:
    """Roofline floor time of the layer vs K (fused vs unfused traffic) on A100/H100/H200 —
    a model from datasheet peaks, labelled so, not a measurement."""
    ks = [1, 3, 5, 7, 9, 11]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, dev in cost.DEVICES.items():
        for fused, ls in ((True, "-"), (False, "--")):
            t = []
            for k in ks:
                c = cost.layer_cost(N, C, M, H, W, k, 2, 1, "same", 1, True, dtype_bytes)
                b, fv, fm = cost.op_work(c, "dsd", "fwd")
                if not fused:
                    b = c.bytes_unfused
                t.append(1e3 * max(b / dev.bandwidth, fv / dev.vector_flops + fm / dev.matrix_flops))
            ax.plot(ks, [v * 1e3 for v in t], ls=ls, marker="o",
                    label=f"{name} {'fused' if fused else 'unfused'}")
    ax.set_xlabel("kernel size K (dilation 2, 'same')")
    ax.set_ylabel("roofline floor [us]")
    ax.set_title(f"COST MODEL (not a measurement): forward floor time\n"
                 f"N={N}, C={C}, M={M}, {H}x{W}, bf16", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    for m in (32, 64, 128, 256, 512):
        ratios = [cost.layer_cost(1, C, m, 16, 16, k, 1, 1, "same").param_ratio_to_dense for k in ks]
        ax2.plot(ks, ratios, marker="o", label=f"M={m}")
    ax2.set_xlabel("kernel size K")
    ax2.set_ylabel("params: separable / dense conv")
    ax2.set_yscale("log")
    ax2.set_title(f"COST MODEL: parameter ratio ~ 1/M + 1/K^2 (C={C})", fontsize=10)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    return _save(fig, os.path.join(out_dir, "cost_model_roofline_floor_A100_H100_H200.png"))
