"""``triton-dsd``: the command line.

    triton-dsd demo      the source article's example through the Triton kernels, checked against eager
    triton-dsd tune      sweep a grid of layer shapes, store the fastest config per kernel and problem
    triton-dsd inspect   offline compile report for sm_80 / sm_90 (no GPU needed)
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional


def _reexec_with(env_update: dict, argv: List[str]) -> int:
    import subprocess
    env = dict(os.environ)
    for k, v in env_update.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return subprocess.call([sys.executable, "-m", "triton_dsd.cli", *argv], env=env)


def cmd_demo(args) -> int:
    import torch
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        print("No CUDA GPU here: running the Triton kernels on CPU under the Triton interpreter "
              "(TRITON_INTERPRET=1).", flush=True)
        return _reexec_with({"TRITON_INTERPRET": "1"}, ["demo", *args.rest])

    import torch.nn.functional as F
    import triton_dsd
    from triton_dsd import cost, launch

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
        launch.LAUNCHES.clear()
        to = dict(device=device, dtype=torch.float32)
        y = triton_dsd.dsd_conv2d(x.to(**to), dw.to(**to), db.to(**to), pw.to(**to), pb.to(**to),
                                  1, padding, d, fused=True)
        err = (y.double().cpu() - ref).abs().max().item()
        ran = sum(launch.LAUNCHES.values())
        good = y.shape == ref.shape and err < 1e-2 and launch.LAUNCHES["dsd_fwd_kernel"] == 1
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
        import triton.testing
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
    if os.environ.get("TRITON_INTERPRET") == "1":
        argv = ["inspect", "--arch", args.arch] + (["--json"] if args.json else [])
        argv += ["--cubin-dir", args.cubin_dir] if args.cubin_dir else []
        return _reexec_with({"TRITON_INTERPRET": None}, argv)
    import json
    from triton_dsd import compile_report
    archs = [int(a) for a in args.arch.split(",") if a.strip()]
    rows = compile_report.collect(archs, cubin_dir=args.cubin_dir)
    if args.json:
        print(json.dumps([dict(vars(r), ok=r.ok) for r in rows], indent=1))
    else:
        print(compile_report.format_table(rows))
    bad = [r for r in rows if not r.ok]
    if bad:
        print(f"\n{len(bad)} kernel build(s) failed, spilled or exceed shared memory",
              file=sys.stderr)
        return 1
    return 0


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


def _choice_list(choices):
    def parse(text: str) -> List[str]:
        vals = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in vals if v not in choices]
        if not vals or bad:
            raise argparse.ArgumentTypeError(f"unknown value(s) {bad or text!r}; choose from "
                                             f"{sorted(set(choices))}")
        return [choices[v] if isinstance(choices, dict) else v for v in vals]
    return parse


def sweep_grid(args, parser) -> list:
    """The problems of a tune/bench sweep: a preset, overridden by explicit flags."""
    import itertools
    import torch
    from triton_dsd.problems import Problem
    if args.preset:
        grid = dict(PRESETS[args.preset])
    elif torch.cuda.is_available():
        grid = dict(PRESETS["quick"], max_candidates=None)
    else:  # under the interpreter only tiny shapes are affordable
        grid = dict(PRESETS["ci"])
    for k in ("dim", "K", "dilation", "C", "M", "dtype", "layout", "stride", "m", "N", "H", "W"):
        v = getattr(args, k, None)
        if v is not None:
            grid[k] = v
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) \
        if torch.cuda.is_available() else torch.device("cpu")
    problems = []
    for dim, K, d, C, M, dt, lay, s, m in itertools.product(
            grid["dim"], grid["K"], grid["dilation"], grid["C"], grid["M"], grid["dtype"],
            grid["layout"], grid["stride"], grid["m"]):
        p = Problem(N=grid["N"], C=C, M=M, H=1 if dim == 1 else grid["H"], W=grid["W"], K=K,
                    dilation=d, stride=s, m=m, dim=dim, dtype=getattr(torch, dt), layout=lay,
                    device=device)
        if min(p.out_hw) >= 1:
            problems.append(p)
    if not problems:
        parser.error("the sweep is empty: no (K, dilation, stride) of the grid fits the input size")
    return problems, grid.get("max_candidates")


def _add_grid_flags(p: argparse.ArgumentParser, presets) -> None:
    p.add_argument("--preset", choices=sorted(presets), help="a predefined grid (flags override it)")
    p.add_argument("--dim", type=_choice_list({"1": 1, "2": 2}), help="1 and/or 2 (e.g. 1,2)")
    p.add_argument("--K", type=_int_list, help="kernel sizes, e.g. 3,5,7")
    p.add_argument("--dilation", type=_int_list, help="dilations, e.g. 1,2,4")
    p.add_argument("--C", type=_int_list, help="input channels, e.g. 64,128")
    p.add_argument("--M", type=_int_list, help="output channels, e.g. 128")
    p.add_argument("--m", type=_int_list, help="depth multipliers, e.g. 1,2")
    p.add_argument("--stride", type=_int_list, help="strides, e.g. 1,2")
    p.add_argument("--dtype", type=_choice_list(DTYPES), help="bfloat16, float16, float32")
    p.add_argument("--layout", type=_choice_list({"cl": "cl", "nchw": "nchw"}), help="cl and/or nchw")
    p.add_argument("--N", type=_pos_int, help="batch size")
    p.add_argument("--H", type=_pos_int, help="input height (2D)")
    p.add_argument("--W", type=_pos_int, help="input width (2D) / length (1D)")


def cmd_tune(args) -> int:
    import time
    import torch
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        if not args.interpret:
            print("triton-dsd tune: no CUDA GPU here, nothing to measure. (--interpret runs the "
                  "same sweep machinery on tiny shapes under the Triton interpreter, with a "
                  "wall-clock timer: real as code, meaningless as speed.)")
            return 0
        return _reexec_with({"TRITON_INTERPRET": "1"}, sys.argv[1:] if args.argv is None else args.argv)
    from triton_dsd import tuning
    problems, max_cands = sweep_grid(args, args.parser)
    if args.max_candidates is not None:
        max_cands = args.max_candidates
    out = args.out or os.environ.get("TRITON_DSD_CONFIG_DIR") or tuning.shipped_dir()
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if torch.cuda.is_available() and world > 1:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    print(f"triton-dsd tune: {len(problems)} problem(s) x {len(tuning.FAMILIES)} kernels, "
          f"<= {max_cands or 'all'} candidates each, rank {rank}/{world}, into {out}", flush=True)
    stats = tuning.sweep(problems, out, max_candidates=max_cands, rank=rank, world=world)
    if world > 1:
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
    print(f"tuned {stats['tuned']}, already stored {stats['skipped']}, failed {stats['failed']} "
          f"(kernel, problem) pairs -> {out}")
    return 0 if stats["failed"] == 0 else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="triton-dsd", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="the article's example through the Triton kernels, checked against eager")
    d.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    d.set_defaults(func=cmd_demo)
    t = sub.add_parser("tune", help="sweep a grid and store the fastest config per kernel and problem")
    _add_grid_flags(t, PRESETS)
    t.add_argument("--out", default=None, help="store folder (default: $TRITON_DSD_CONFIG_DIR, "
                   "else the package's autotune_configs/)")
    t.add_argument("--max-candidates", type=_pos_int, default=None,
                   help="time at most this many configs per kernel and problem")
    t.add_argument("--interpret", action="store_true",
                   help="no GPU: run the sweep under the Triton interpreter (wall-clock timer)")
    t.set_defaults(func=cmd_tune)
    i = sub.add_parser("inspect", help="offline compile report (registers, spills, SASS mix)")
    i.add_argument("--arch", default="80,90", help="comma-separated SM versions (default 80,90)")
    i.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    i.add_argument("--cubin-dir", default=None, help="also write every cubin into this folder")
    i.set_defaults(func=cmd_inspect)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.parser, args.argv = parser, argv
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
