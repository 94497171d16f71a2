"""triton-dsd: the command line of triton_dsd.

  triton-dsd demo      the source article's example through the Triton kernels, checked against eager
  triton-dsd tune      sweep a grid of layer shapes, store the fastest config per kernel and problem
  triton-dsd bench     time Triton against the eager baseline (and cuDNN, native, torch.compile) into a CSV
  triton-dsd plot      figures from a benchmark CSV (or the cost model)
  triton-dsd cost      parameters, FLOPs, ideal bytes and the roofline floor of a layer
  triton-dsd inspect   offline compile report for sm_80 / sm_90 (no GPU needed)
  triton-dsd model     offline performance model: modeled H200 time and % of roofline per case

With no GPU, demo runs the kernels under the Triton interpreter; tune and bench need a GPU
(--interpret runs their machinery on tiny shapes, as code, not as a speed).
Run `triton-dsd COMMAND --help` for the options of a command.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import List, Optional

import torch
import torch.nn.functional as F
import triton.testing

import triton_dsd
from triton_dsd import _runtime, bench, compile_report, cost, perf_model, store, tuning
from triton_dsd.problems import Problem


class UsageError(Exception):
    """A wrong invocation: reported as one line with exit status 2."""


def _reexec_with(env_update: dict, argv: List[str]) -> int:
    """Run this command again in a fresh process with a changed environment (the interpreter
    flag must be set before the kernels are defined)."""
    env = dict(os.environ)
    for k, v in env_update.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return subprocess.call([sys.executable, "-m", "triton_dsd.cli", *argv], env=env)


def _argv(args) -> List[str]:
    return sys.argv[1:] if args.argv is None else list(args.argv)


def cmd_demo(args) -> int:
    if not torch.cuda.is_available() and not _runtime.INTERPRET:
        print("No CUDA GPU here: running the Triton kernels on CPU under the Triton interpreter "
              "(TRITON_INTERPRET=1).", flush=True)
        return _reexec_with({"TRITON_INTERPRET": "1"}, _argv(args))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    N, C, M, H, W, K, d = 1, 3, 64, 10, 10, 3, 2
    print(f"Source article's example: input {N}x{C}x{H}x{W}, {M} outputs, {K}x{K} kernel, "
          f"dilation {d}; device {device}")
    ok = True
    for padding in (0, "same"):
        dw = torch.randn(C, 1, K, K, dtype=torch.float64)
        db = torch.randn(C, dtype=torch.float64)
        pw = torch.randn(M, C, 1, 1, dtype=torch.float64)
        pb = torch.randn(M, dtype=torch.float64)
        x = torch.randn(N, C, H, W, dtype=torch.float64)
        ref = F.conv2d(F.conv2d(x, dw, db, 1, padding, d, groups=C), pw, pb)
        _runtime.LAUNCHES.clear()
        to = dict(device=device, dtype=torch.float32)
        y = triton_dsd.dsd_conv2d(x.to(**to), dw.to(**to), db.to(**to), pw.to(**to), pb.to(**to),
                                  1, padding, d, fused=True)
        err = (y.double().cpu() - ref).abs().max().item()
        ran = sum(_runtime.LAUNCHES.values())
        good = y.shape == ref.shape and err < 1e-2 and _runtime.LAUNCHES["dsd_fwd_kernel"] == 1
        ok &= good
        c = cost.layer_cost(N, C, M, H, W, K, d, 1, padding, bias=True, dtype_bytes=4)
        print(f"\n padding={padding!r}: output {tuple(y.shape)} (eager {tuple(ref.shape)}), "
              f"max |triton - eager fp64| = {err:.2e}, fused Triton launches: {ran} -> "
              f"{'OK' if good else 'MISMATCH'}")
        print(f"   params: depthwise {c.params_depthwise}, pointwise {c.params_pointwise}, "
              f"total {c.params} vs dense conv {c.params_dense} ({c.param_ratio_to_dense:.3f}x)")
        print(f"   multiply-adds: depthwise {c.macs_depthwise}, pointwise {c.macs_pointwise}, "
              f"total {c.macs} vs dense conv {c.macs_dense} ({c.mac_ratio_to_dense:.3f}x)")
    print("\n Note: the article prints (1, 64, 10, 10) for padding=0; the correct shape is "
          "(1, 64, 6, 6). Only padding='same' keeps 10x10.")
    if device == "cpu":
        print(" Throughput needs a CUDA GPU: the interpreter checks the math, not the speed.")
    else:
        bf = dict(device=device, dtype=torch.bfloat16)
        x = torch.randn(8, 128, 56, 56, **bf).to(memory_format=torch.channels_last)
        w = torch.randn(128, 1, 3, 3, **bf)
        pw = torch.randn(128, 128, 1, 1, **bf)
        t_tr = triton.testing.do_bench(lambda: triton_dsd.dsd_conv2d(x, w, None, pw, None, 1, 2, 2))
        t_ea = triton.testing.do_bench(
            lambda: F.conv2d(F.conv2d(x, w, None, 1, 2, 2, groups=128), pw))
        print(f" {torch.cuda.get_device_name()}: separable 3x3 d2, 8x128x56x56 -> 128, bf16 "
              f"channels_last, forward: triton fused {t_tr * 1e3:.1f} us, eager {t_ea * 1e3:.1f} us")
    return 0 if ok else 1


def cmd_inspect(args) -> int:
    if _runtime.INTERPRET:  # compiling for a GPU needs the kernels defined for the GPU
        return _reexec_with({"TRITON_INTERPRET": None}, _argv(args))
    rows = compile_report.collect(args.arch, cubin_dir=args.cubin_dir,
                                  defaults=not args.stored_only, sweep=args.sweep)
    as_json = json.dumps([dict(vars(r), ok=r.ok) for r in rows], indent=1)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(as_json + "\n")
    print(as_json if args.json else compile_report.format_table(rows))
    bad = [r for r in rows if not r.ok]
    if bad:
        spills = sum(r.spills for r in bad)
        print(f"\n{len(bad)} kernel build(s) failed, spilled ({spills}) or exceed shared memory",
              file=sys.stderr)
        return 1
    return 0


def cmd_model(args) -> int:
    if _runtime.INTERPRET:  # compiling for a GPU needs the kernels defined for the GPU
        return _reexec_with({"TRITON_INTERPRET": None}, _argv(args))
    cases = [c for c in perf_model.canonical_cases() if args.cases is None or args.cases in c.name]
    if args.list:
        print("\n".join(c.name for c in cases))
        return 0
    if not cases:
        raise UsageError(f"--cases {args.cases!r} matches no case (see --list)")
    if args.measure and not torch.cuda.is_available():
        raise UsageError("--measure needs a CUDA GPU (the model itself does not)")
    baseline = perf_model.read_json(args.baseline) if args.baseline else None
    models = []
    for case in cases:
        m = perf_model.model_case(case)
        if args.measure and not m.error:
            m.measured_s = perf_model.measure(case)
        models.append(m)
        if args.verbose:
            print(f"modeled {case.name}: {m.modeled_s * 1e6:.1f} us", file=sys.stderr, flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(perf_model.to_json(models) + "\n")
    if args.figure:
        perf_model.figure(models, args.figure, baseline)
    print("MODEL, not a measurement: H200 (sm_90 SASS, bf16, default configs); "
          "see `triton-dsd model --help` for what it cannot see.")
    print(perf_model.format_table(models, baseline))
    failed = [m for m in models if m.error]
    for m in failed:
        print(f"{m.case}: {m.error}", file=sys.stderr)
    return 1 if failed else 0


DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
          "float32": "float32", "fp32": "float32"}

#: sweep presets: grid values, plus the candidate cap per kernel
PRESETS = {
    "quick": dict(dim=[2], K=[3, 7], dilation=[1, 2], C=[128], M=[128], dtype=["bfloat16"],
                  layout=["cl"], N=8, H=56, W=56, stride=[1], m=[1], max_candidates=6),
    "full": dict(dim=[2], K=[3, 5, 7, 9], dilation=[1, 2, 4], C=[64, 128, 256], M=[128, 256],
                 dtype=["bfloat16"], layout=["cl", "nchw"], N=8, H=56, W=56, stride=[1], m=[1],
                 max_candidates=24),
    "ci": dict(dim=[2, 1], K=[3], dilation=[1, 2], C=[4], M=[8], dtype=["float32"], layout=["cl"],
               N=1, H=5, W=6, stride=[1], m=[1], max_candidates=2),
}
BENCH_PRESETS = {
    "quick": dict(PRESETS["quick"], K=[3, 5, 7], dilation=[1, 2], C=[64, 128]),
    "full": dict(PRESETS["full"], C=[32, 64, 128, 256]),
    "ci": PRESETS["ci"],
    # decode steps (--mode step): a batch of 1..256 streams, C = M 256..1024 (square only)
    "step": dict(dim=[1], K=[4, 31], dilation=[1], C=[256, 512, 1024], M=[256, 512, 1024],
                 dtype=["bfloat16"], layout=["cl"], N=[1, 8, 32, 64, 256], H=1, W=64,
                 stride=[1], m=[1], square=True),
}


def _int_list(text: str) -> List[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, got {text!r}")
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _pos_int(text: str) -> int:
    vals = _int_list(text)
    if len(vals) != 1:
        raise argparse.ArgumentTypeError(f"expected one positive integer, got {text!r}")
    return vals[0]


def _arch_list(text: str) -> List[int]:
    vals = _int_list(text)
    bad = [v for v in vals if v not in compile_report.SHARED_LIMIT]
    if bad:
        raise argparse.ArgumentTypeError(f"unsupported arch {bad}; choose from "
                                         f"{sorted(compile_report.SHARED_LIMIT)}")
    return vals


def _pos_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _padding(text: str):
    if text in ("same", "valid"):
        return text
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'same', 'valid' or an integer >= 0, got {text!r}")
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected 'same', 'valid' or an integer >= 0, got {text!r}")
    return v


def _choice_list(choices):
    def parse(text: str) -> List[str]:
        vals = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in vals if v not in choices]
        if not vals or bad:
            raise argparse.ArgumentTypeError(f"unknown value(s) {bad or text!r}; choose from "
                                             f"{sorted(set(choices))}")
        return [choices[v] if isinstance(choices, dict) else v for v in vals]
    return parse


def sweep_grid(args, presets=PRESETS) -> tuple:
    """The problems of a tune/bench sweep: a preset, overridden by explicit flags."""
    if args.preset:
        grid = dict(presets[args.preset])
    elif torch.cuda.is_available():
        grid = dict(presets["quick"], max_candidates=None)
    else:  # under the interpreter only tiny shapes are affordable
        grid = dict(presets["ci"])
    for k in ("dim", "K", "dilation", "C", "M", "dtype", "layout", "stride", "m", "N", "H", "W"):
        v = getattr(args, k, None)
        if v is not None:
            grid[k] = v
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) \
        if torch.cuda.is_available() else torch.device("cpu")
    problems = []
    batches = grid["N"] if isinstance(grid["N"], list) else [grid["N"]]
    for N, dim, K, d, C, M, dt, lay, s, m in itertools.product(
            batches, grid["dim"], grid["K"], grid["dilation"], grid["C"], grid["M"],
            grid["dtype"], grid["layout"], grid["stride"], grid["m"]):
        if grid.get("square") and C != M:
            continue
        p = Problem(N=N, C=C, M=M, H=1 if dim == 1 else grid["H"], W=grid["W"], K=K,
                    dilation=d, stride=s, m=m, dim=dim, dtype=getattr(torch, dt), layout=lay,
                    device=device)
        if min(p.out_hw) >= 1:
            problems.append(p)
    if not problems:
        raise UsageError("the sweep is empty: no (K, dilation, stride) of the grid fits the "
                         "input size")
    return problems, grid.get("max_candidates")


def _add_grid_flags(p: argparse.ArgumentParser, presets, many_batches: bool = False) -> None:
    p.add_argument("--preset", choices=sorted(presets),
                   help="a predefined grid (flags override it; default: quick on a GPU, ci "
                        "under the interpreter)")
    p.add_argument("--dim", type=_choice_list({"1": 1, "2": 2}), help="1 and/or 2 (e.g. 1,2)")
    p.add_argument("--K", type=_int_list, help="kernel sizes, e.g. 3,5,7")
    p.add_argument("--dilation", type=_int_list, help="dilations, e.g. 1,2,4")
    p.add_argument("--C", type=_int_list, help="input channels, e.g. 64,128")
    p.add_argument("--M", type=_int_list, help="output channels, e.g. 128")
    p.add_argument("--m", type=_int_list, help="depth multipliers, e.g. 1,2")
    p.add_argument("--stride", type=_int_list, help="strides, e.g. 1,2")
    p.add_argument("--dtype", type=_choice_list(DTYPES), help="bfloat16, float16, float32")
    p.add_argument("--layout", type=_choice_list({"cl": "cl", "nchw": "nchw"}),
                   help="cl (channels_last) and/or nchw")
    if many_batches:
        p.add_argument("--N", type=_int_list, help="batch sizes (streams, for --mode step), "
                                                   "e.g. 1,8,64")
    else:
        p.add_argument("--N", type=_pos_int, help="batch size")
    p.add_argument("--H", type=_pos_int, help="input height (2D)")
    p.add_argument("--W", type=_pos_int, help="input width (2D) / length (1D)")


def _interpreter_or_exit(args, what: str, no_gpu_message: str) -> Optional[int]:
    """None to go on here; else the exit status (a message, or a re-run under the interpreter)."""
    if torch.cuda.is_available() or _runtime.INTERPRET:
        return None
    if not args.interpret:
        print(no_gpu_message)
        return 0
    return _reexec_with({"TRITON_INTERPRET": "1"}, _argv(args))


def cmd_tune(args) -> int:
    stop = _interpreter_or_exit(args, "tune", (
        "triton-dsd tune: no CUDA GPU here, nothing to measure. (--interpret runs the same "
        "sweep machinery on tiny shapes under the Triton interpreter, with a wall-clock timer: "
        "real as code, meaningless as speed.)"))
    if stop is not None:
        return stop
    problems, max_cands = sweep_grid(args)
    if args.max_candidates is not None:
        max_cands = args.max_candidates
    out = args.out or store.write_dir()
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if torch.cuda.is_available() and world > 1:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    print(f"triton-dsd tune: {len(problems)} problem(s) x {len(tuning.FAMILIES)} kernels, "
          f"<= {max_cands or 'all'} candidates each, rank {rank}/{world}, into {out}", flush=True)
    stats = tuning.sweep(problems, out, max_candidates=max_cands, rank=rank, world=world)
    if world > 1:
        os.makedirs(out, exist_ok=True)
        open(os.path.join(out, f".shard{rank}.done"), "w").close()
        if rank == 0:
            deadline = time.time() + 6 * 3600
            while not all(os.path.exists(os.path.join(out, f".shard{r}.done")) for r in range(world)):
                if time.time() > deadline:
                    print("triton-dsd tune: timed out waiting for the other ranks", file=sys.stderr)
                    return 1
                time.sleep(2)
            n = tuning.merge_shards(out, world)
            for r in range(world):
                os.unlink(os.path.join(out, f".shard{r}.done"))
            print(f"rank 0 merged {n} entries from {world} shards")
    print(f"tuned {stats['tuned']}, already stored {stats['stored']}, failed {stats['failed']} "
          f"(kernel, problem) pairs -> {out}"
          + (f"; {stats['shared']} more shared a key with another problem of this sweep"
             if stats["shared"] else ""))
    return 0 if stats["failed"] == 0 else 1


def cmd_bench(args) -> int:
    stop = _interpreter_or_exit(args, "bench", (
        "triton-dsd bench: no CUDA GPU here, so there is nothing to time. `triton-dsd cost` "
        "(the cost model) and `triton-dsd inspect` (the offline compile report) are what a CPU "
        "machine can tell; `--interpret` runs this pipeline end to end on tiny shapes under the "
        "Triton interpreter."))
    if stop is not None:
        return stop
    args.preset = args.preset or ("quick" if torch.cuda.is_available() else "ci")
    args.mode = args.mode or (["step"] if args.preset == "step" else ["fwd"])
    problems, _ = sweep_grid(args, BENCH_PRESETS)
    interp = not torch.cuda.is_available()
    if args.csv:
        csv_path = args.csv
    elif args.out_dir:
        csv_path = os.path.join(args.out_dir, "bench.csv")
    elif interp:  # interpreter runs never write into plots/ (it holds real GPU figures only)
        csv_path = os.path.join(tempfile.mkdtemp(prefix="triton_dsd_bench_"), "bench.csv")
    else:
        gpu = bench.gpu_name(problems[0].device).replace(" ", "_")
        csv_path = os.path.join("plots", f"bench_{gpu}.csv")
    if os.path.exists(csv_path):
        try:
            bench.read_csv(csv_path)
        except bench.SchemaError as e:
            raise UsageError(str(e))
    dev = problems[0].device
    for op in args.op:
        dropped = [p for p in args.provider if p in bench.OP_PROVIDERS[op]
                   and p not in bench.providers_for(op, args.provider, dev)
                   and "step" not in args.mode]
        if dropped:
            print(f"note: {', '.join(dropped)} measure cuDNN on/off and need a CUDA device: "
                  f"not run for {op} here")
    print(f"triton-dsd bench: {len(problems)} shape(s), ops {args.op}, modes {args.mode}, "
          f"providers {args.provider}{' (interpreter: not a speed)' if interp else ''}", flush=True)
    if args.fast:
        bench.BENCH_MS.update(warmup=10, rep=40)
    failures: List[str] = []
    rows = bench.run(problems, args.op, args.provider, args.mode,
                     progress=lambda m: print(m, flush=True),
                     on_problem=lambda rs: bench.append_csv(csv_path, rs), failures=failures)
    if not rows:
        print("no provider could run any case", file=sys.stderr)
        return 1
    n = len(bench.read_csv(csv_path))
    print()
    print(bench.summary(rows))
    print(f"\nwrote {len(rows)} rows ({n} in the file) to {csv_path}")
    if not args.no_plot:
        from triton_dsd import plots  # matplotlib: only when drawing
        label = "INTERPRETER (not a speed): " if interp else ""
        figs = plots.figures(bench.read_csv(csv_path), os.path.dirname(os.path.abspath(csv_path)),
                             label)
        print(f"figures: {', '.join(figs) if figs else 'none (each needs >= 2 points on an axis)'}")
    if failures:
        print(f"{len(failures)} Triton case(s) failed:\n  " + "\n  ".join(failures),
              file=sys.stderr)
        return 1
    return 0


def cmd_plot(args) -> int:
    from triton_dsd import plots  # matplotlib: only when drawing
    if args.cost_model:
        print(plots.cost_model_figure(args.out))
        return 0
    if not args.csv:
        raise UsageError("give --csv PATH (or --cost-model)")
    if not os.path.exists(args.csv):
        raise UsageError(f"no such CSV {args.csv!r}")
    try:
        rows = bench.read_csv(args.csv)
    except bench.SchemaError as e:
        raise UsageError(str(e))
    if not rows:
        raise UsageError(f"{args.csv} has no rows")
    figs = plots.figures(rows, args.out, args.label)
    for f in figs:
        print(f)
    if not figs:
        print("no figure: every figure needs >= 2 points along K, dilation or C and an eager row")
    return 0


def cmd_cost(args) -> int:
    dtype_bytes = {"bfloat16": 2, "float16": 2, "float32": 4}[args.dtype]
    try:
        c = cost.layer_cost(args.N, args.C, args.M, args.H, args.W, args.K, args.dilation,
                            args.stride, args.padding, args.m, True, dtype_bytes)
    except ValueError as e:
        raise UsageError(str(e))
    custom = (args.bandwidth, args.flops, args.vector_flops)
    if any(v is not None for v in custom):
        if args.bandwidth is None or args.flops is None:
            raise UsageError("give both --bandwidth (GB/s) and --flops (TFLOP/s), and "
                             "optionally --vector-flops")
        vector = args.vector_flops if args.vector_flops is not None else args.flops / 15
        dev = cost.Device("custom", args.bandwidth * 1e9, args.flops * 1e12, vector * 1e12)
    else:
        try:
            dev = cost.device_for(args.device)
        except KeyError as e:
            raise UsageError(str(e.args[0]))
    print(f"layer: N={args.N} C={args.C} M={args.M} {args.H}x{args.W} K={args.K} d={args.dilation} "
          f"stride={args.stride} padding={args.padding} m={args.m} {args.dtype} -> output {c.out_hw}")
    print(f"  params     depthwise {c.params_depthwise:>12,}  pointwise {c.params_pointwise:>12,}  "
          f"total {c.params:>12,}  dense conv {c.params_dense:>12,}  ratio {c.param_ratio_to_dense:.4f}")
    print(f"  FLOPs      depthwise {2 * c.macs_depthwise:>12,}  pointwise {2 * c.macs_pointwise:>12,}  "
          f"total {c.flops:>12,}  dense conv {2 * c.macs_dense:>12,}  ratio {c.mac_ratio_to_dense:.4f}")
    for op in ("depthwise", "pointwise", "dsd"):
        b, fv, fm = cost.op_work(c, op, "fwd")
        print(f"  ideal bytes {op:9s} {b:>14,.0f}")
    print(f"  ideal bytes whole layer: fused {c.bytes_fused:,}  unfused {c.bytes_unfused:,} "
          f"(+{c.bytes_unfused - c.bytes_fused:,}: z written and read back)")
    for mode in ("fwd", "fwd+bwd"):
        print(f"  roofline floor on {dev.name} ({dev.bandwidth / 1e12:.2f} TB/s, "
              f"{dev.matrix_flops / 1e12:.0f} TFLOP/s matrix), {mode}: "
              f"{cost.roofline_ms(c, 'dsd', mode, dev) * 1e3:.2f} us (model, not a measurement)")
    return 0


_FMT = argparse.ArgumentDefaultsHelpFormatter


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="triton-dsd", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    d = sub.add_parser("demo", formatter_class=_FMT,
                       help="the article's example through the Triton kernels, checked against eager",
                       description="Runs the source article's example through the fused Triton "
                                   "kernel and checks it against eager PyTorch in float64.")
    d.set_defaults(func=cmd_demo)
    t = sub.add_parser("tune", formatter_class=_FMT,
                       help="sweep a grid and store the fastest config per kernel and problem",
                       description="Times the candidate configs of every kernel for each problem "
                                   "of a grid and stores the fastest (resumable; under torchrun "
                                   "each rank tunes a slice).")
    _add_grid_flags(t, PRESETS)
    t.add_argument("--out", default=None,
                   help="store folder (default: $TRITON_DSD_CONFIG_DIR, else the user cache "
                        f"{store.user_dir()})")
    t.add_argument("--max-candidates", type=_pos_int, default=None,
                   help="time at most this many configs per kernel and problem (default: the preset's)")
    t.add_argument("--interpret", action="store_true",
                   help="no GPU: run the sweep under the Triton interpreter (wall-clock timer)")
    t.set_defaults(func=cmd_tune)
    b = sub.add_parser("bench", formatter_class=_FMT,
                       help="time Triton against the eager baseline into a CSV (+ figures)",
                       description="Times each provider with triton.testing.do_bench and appends "
                                   "the rows to a CSV (a re-measured row replaces its old one).")
    _add_grid_flags(b, BENCH_PRESETS, many_batches=True)
    b.add_argument("--op", type=_choice_list({o: o for o in bench.OPS}), default=["dsd"],
                   help="dsd (the whole layer), depthwise, pointwise")
    b.add_argument("--provider", type=_choice_list({p: p for p in bench.PROVIDERS}),
                   default=list(bench.PROVIDERS), help="any of " + ", ".join(bench.PROVIDERS))
    b.add_argument("--mode", type=_choice_list({m: m for m in bench.MODES}), default=None,
                   help="fwd, bwd, fwd+bwd, step (one decode frame of N streams of the causal "
                        "1D layer; the 'step' preset's default) (default: fwd)")
    b.add_argument("--csv", default=None, help="CSV to append to (default: plots/bench_<GPU>.csv)")
    b.add_argument("--out-dir", default=None, help="folder for the CSV (bench.csv) and figures")
    b.add_argument("--no-plot", action="store_true", help="do not draw figures")
    b.add_argument("--fast", action="store_true", help="shorter do_bench budgets (10/40 ms)")
    b.add_argument("--interpret", action="store_true",
                   help="no GPU: run the pipeline on tiny shapes under the interpreter (temp folder)")
    b.set_defaults(func=cmd_bench)
    pl = sub.add_parser("plot", formatter_class=_FMT,
                        help="figures from a benchmark CSV (or the cost model)",
                        description="Draws throughput-vs-K/dilation/C figures with a speedup "
                                    "panel from a CSV written by `triton-dsd bench`.")
    pl.add_argument("--csv", default=None, help="a CSV written by `triton-dsd bench`")
    pl.add_argument("--out", default="plots", help="output folder")
    pl.add_argument("--label", default="", help="title prefix")
    pl.add_argument("--cost-model", action="store_true",
                    help="the cost-model figure (labelled a model)")
    pl.set_defaults(func=cmd_plot)
    c = sub.add_parser("cost", formatter_class=_FMT,
                       help="parameters, FLOPs, ideal bytes and roofline floor of a layer",
                       description="The cost of one separable layer (a model from datasheet "
                                   "peaks, not a measurement).")
    c.add_argument("--N", type=_pos_int, default=8, help="batch size")
    c.add_argument("--C", type=_pos_int, default=128, help="input channels")
    c.add_argument("--M", type=_pos_int, default=128, help="output channels")
    c.add_argument("--H", type=_pos_int, default=56, help="input height")
    c.add_argument("--W", type=_pos_int, default=56, help="input width")
    c.add_argument("--K", type=_pos_int, default=3, help="kernel size")
    c.add_argument("--dilation", type=_pos_int, default=1, help="dilation")
    c.add_argument("--stride", type=_pos_int, default=1, help="stride")
    c.add_argument("--m", type=_pos_int, default=1, help="depth multiplier")
    c.add_argument("--padding", type=_padding, default="same", help="'same', 'valid' or an int")
    c.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16",
                   help="element type")
    c.add_argument("--device", default="H200", help="A100, H100 or H200 (datasheet peaks)")
    c.add_argument("--bandwidth", type=_pos_float, default=None,
                   help="instead of --device: memory bandwidth in GB/s")
    c.add_argument("--flops", type=_pos_float, default=None,
                   help="instead of --device: matrix (tensor-core) TFLOP/s")
    c.add_argument("--vector-flops", type=_pos_float, default=None,
                   help="with --bandwidth/--flops: fp32 TFLOP/s (default: --flops / 15)")
    c.set_defaults(func=cmd_cost)
    i = sub.add_parser("inspect", formatter_class=_FMT,
                       help="offline compile report (registers, spills, SASS mix)",
                       description="Compiles every kernel for the given GPU architectures with "
                                   "no GPU and reports registers, spills (STACK, LOCAL, LDL/STL), "
                                   "shared memory and the instruction mix; exits 1 on any spill, "
                                   "shared memory over the limit or build error.")
    i.add_argument("--arch", type=_arch_list, default=[80, 90],
                   help="comma-separated SM versions")
    i.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    i.add_argument("--json-out", default=None, metavar="FILE",
                   help="also write the JSON rows to FILE (the test suite reads them)")
    i.add_argument("--cubin-dir", default=None, help="also write every cubin into this folder")
    i.add_argument("--stored-only", action="store_true",
                   help="only the stored configs (every folder the lookup reads)")
    i.add_argument("--sweep", action="store_true",
                   help="also the default configs of a broad matrix of layers (2 layouts, 1D "
                        "and 2D, K 3..13, fused M 32..256; several minutes)")
    i.set_defaults(func=cmd_inspect)
    mo = sub.add_parser("model", formatter_class=argparse.RawDescriptionHelpFormatter,
                        help="offline performance model (modeled H200 time, %% of roofline)",
                        description=perf_model.__doc__)
    mo.add_argument("--cases", default=None, metavar="TEXT",
                    help="only the canonical cases whose name contains TEXT")
    mo.add_argument("--list", action="store_true", help="list the canonical cases and exit")
    mo.add_argument("--json-out", default=None, metavar="FILE", help="write every number as JSON")
    mo.add_argument("--figure", default=None, metavar="FILE",
                    help="bar chart of the modeled %% of roofline (PNG/PDF/SVG by extension)")
    mo.add_argument("--baseline", default=None, metavar="JSON",
                    help="an earlier --json-out: before/after columns and bars")
    mo.add_argument("--measure", action="store_true",
                    help="on a GPU: also time every case (do_bench, same default configs) and "
                         "print measured beside modeled")
    mo.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    mo.set_defaults(func=cmd_model)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except UsageError as e:
        print(f"triton-dsd {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an output folder that cannot be written, a full disk
        print(f"triton-dsd {args.cmd}: error: {e.strerror or e}"
              f"{': ' + e.filename if getattr(e, 'filename', None) else ''}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
