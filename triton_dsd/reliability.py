"""Reliability checks run by the GPU script (and, scaled down, on CPU): tensors past 2^31
elements, and bit-identical weight gradients on the deterministic path.

    python -m triton_dsd.reliability [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List

import torch
import torch.nn.functional as F

import triton_dsd
from triton_dsd import _runtime, launchers

INT32_MAX = 2**31 - 1


def _strided_huge(device: str, dtype=torch.float16) -> torch.Tensor:
    """A (1, 2, 5, 9) view whose second channel lies past element 2^31 of its storage.

    On CPU the storage is allocated lazily (untouched pages cost nothing), so the index
    arithmetic past int32 is exercised with a grid of a few programs."""
    n = 2**31 + 64
    base = torch.empty(n, dtype=dtype, device=device)
    x = base.as_strided((1, 2, 5, 9), (0, 2**31, 9, 1))
    g = torch.Generator().manual_seed(0)
    x.copy_(torch.randn(1, 2, 5, 9, generator=g).to(dtype))
    return x


def large_offsets_small_grid(device: str) -> Dict[str, object]:
    """Every stage on a view whose addresses pass 2^31 elements (few programs)."""
    x = _strided_huge(device)
    assert launchers.needs_int64(x)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(2, 1, 3, 3, generator=g).to(x.dtype).to(device)
    pw = torch.randn(3, 2, 1, 1, generator=g).to(x.dtype).to(device)
    ref_x = x.detach().cpu().double().contiguous()
    z_ref = F.conv2d(ref_x, w.cpu().double(), None, 1, 1, 1, groups=2)
    out = {}
    z = triton_dsd.depthwise_conv2d(x, w, None, 1, 1)
    out["depthwise"] = float((z.cpu().double() - z_ref).abs().max())
    y = triton_dsd.pointwise_conv2d(x, pw)
    out["pointwise"] = float((y.cpu().double() - F.conv2d(ref_x, pw.cpu().double())).abs().max())
    y = triton_dsd.dsd_conv2d(x, w, None, pw, None, 1, 1)
    y_ref = F.conv2d(z_ref.half().double(), pw.cpu().double())
    out["fused"] = float((y.cpu().double() - y_ref).abs().max())
    out["ok"] = all(v < 2e-2 for k, v in out.items() if k != "ok")
    return out


def large_tensor_gpu(dtype=torch.bfloat16) -> Dict[str, object]:
    """A real tensor of more than 2^31 elements on the GPU (about 4.3 GB in bf16): depthwise,
    pointwise and fused forward against eager, compared on the rows past element 2^31."""
    dev = "cuda"
    N, C, H, W = 1, 8, 16384, 16400  # 2.15e9 elements
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(N, C, H, W, generator=g, device=dev, dtype=dtype).contiguous(
        memory_format=torch.channels_last)
    assert x.numel() > INT32_MAX
    w = torch.randn(C, 1, 3, 3, generator=g, device=dev, dtype=dtype)
    pw = torch.randn(C, C, 1, 1, generator=g, device=dev, dtype=dtype)
    out = {"elements": x.numel()}
    t = time.time()
    r0 = H - 64  # compare output rows r0 .. H-2: their element offsets pass 2^31
    xs = x[:, :, r0 - 1:].float()  # the input rows they read (no vertical padding needed)
    z_ref = F.conv2d(xs, w.float(), None, 1, (0, 1), 1, groups=C)
    z = triton_dsd.depthwise_conv2d(x, w, None, 1, 1)
    out["depthwise_maxerr_tail"] = float((z[:, :, r0:H - 1].float() - z_ref).abs().max())
    del z
    y = triton_dsd.pointwise_conv2d(x, pw)
    y_ref = F.conv2d(x[:, :, r0:].float(), pw.float())
    out["pointwise_maxerr_tail"] = float((y[:, :, r0:].float() - y_ref).abs().max())
    del y
    y = triton_dsd.dsd_conv2d(x, w, None, pw, None, 1, 1)
    y_ref = F.conv2d(z_ref.to(dtype).float(), pw.float())
    out["fused_maxerr_tail"] = float((y[:, :, r0:H - 1].float() - y_ref).abs().max())
    out["seconds"] = round(time.time() - t, 2)
    out["ok"] = all(v < 0.25 for k, v in out.items() if k.endswith("tail"))
    return out


def determinism(device: str, runs: int = 10) -> Dict[str, object]:
    """dW and db of every stage, deterministic=True: bit-identical over ``runs`` runs."""
    big = device == "cuda"
    N, C, M, H = (8, 128, 128, 56) if big else (2, 4, 6, 7)
    dt = torch.bfloat16 if big else torch.float32
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, H, H, generator=g).to(dt).to(device).contiguous(
        memory_format=torch.channels_last)
    ps = [torch.randn(C, 1, 3, 3, generator=g), torch.randn(C, generator=g),
          torch.randn(M, C, 1, 1, generator=g), torch.randn(M, generator=g)]
    dy = torch.randn(N, M, H, H, generator=g).to(dt).to(device)
    results: Dict[str, object] = {}
    for deterministic in (True, False):
        grads: List[List[torch.Tensor]] = []
        for _ in range(runs):
            p = [t.to(dt).to(device).detach().clone().requires_grad_() for t in ps]
            triton_dsd.dsd_conv2d(x, *p, 1, 2, 2, deterministic=deterministic).backward(dy)
            grads.append([t.grad.clone() for t in p])
        same = all(torch.equal(a, b) for gs in grads[1:] for a, b in zip(grads[0], gs))
        results["deterministic" if deterministic else "atomic"] = (
            "bit-identical" if same else "varies run to run")
    results["ok"] = results["deterministic"] == "bit-identical"
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m triton_dsd.reliability")
    ap.add_argument("--out", default=None, help="write checks.json here")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not _runtime.INTERPRET:  # the interpreter must be on before import
        env = dict(os.environ, TRITON_INTERPRET="1")
        return subprocess.call([sys.executable, "-m", "triton_dsd.reliability",
                                *(sys.argv[1:] if argv is None else argv)], env=env)
    res = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu_interpreter"}
    for name, fn in (("large_offsets_small_grid", lambda: large_offsets_small_grid(device)),
                     ("large_tensor_gpu", large_tensor_gpu if device == "cuda" else None),
                     ("determinism_dW_10_runs", lambda: determinism(device))):
        if fn is None:
            res[name] = "skipped: needs a GPU"
            continue
        try:
            res[name] = fn()
        except Exception as e:  # reported, never hidden
            res[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]}
        print(f"{name}: {res[name]}", flush=True)
    ok = all(v.get("ok", False) for v in res.values() if isinstance(v, dict))
    res["ok"] = ok
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "checks.json"), "w") as f:
            json.dump(res, f, indent=1)
    print("checks:", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
