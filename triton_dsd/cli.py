"""``triton-dsd``: the command line.

    triton-dsd demo      the source article's example through the Triton kernels, checked against eager
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="triton-dsd", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="the article's example through the Triton kernels, checked against eager")
    d.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    d.set_defaults(func=cmd_demo)
    i = sub.add_parser("inspect", help="offline compile report (registers, spills, SASS mix)")
    i.add_argument("--arch", default="80,90", help="comma-separated SM versions (default 80,90)")
    i.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    i.add_argument("--cubin-dir", default=None, help="also write every cubin into this folder")
    i.set_defaults(func=cmd_inspect)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
