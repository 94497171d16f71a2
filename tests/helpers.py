"""The helpers every test module shares: the device, launch checks, layouts, the float64
eager references and the whole-layer checks, all-pairs option grids, and a permuted program
order for the interpreter."""
import contextlib
import itertools
import math
import os
import random
import subprocess
import sys
from typing import Callable, Dict, List, Sequence

import torch
import torch.nn.functional as F

import triton_dsd
from triton_dsd import _runtime
from triton_dsd.testing import assert_close, magnitudes, reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
#: the environment for subprocesses that compile for a GPU (never interpreted)
ENV_NO_INTERP = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
#: the environment for subprocesses that run kernels as the tests do (interpreted on CPU)
ENV_AS_TESTS = dict(os.environ, **({"TRITON_INTERPRET": "1"} if DEVICE == "cpu" else {}))
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def run_fresh(*args: str, env: Dict[str, str] = ENV_NO_INTERP,
              timeout: float = 600) -> subprocess.CompletedProcess:
    """``python *args`` in a fresh process (``-c CODE`` or ``-m triton_dsd.cli ...``), with its
    output captured as text; by default without the interpreter (it compiles for a GPU)."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
#: fp32 GEMMs may use TF32 on a GPU (the conftest turns cuDNN's flag off for exact tests)
TF32 = DEVICE == "cuda"


def ran(*names: str) -> bool:
    """True if each named kernel launched at least once since the test began."""
    return all(_runtime.LAUNCHES[n] > 0 for n in names)


def same_format(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Both tensors are dense in the same memory format(s) (ambiguous shapes, such as 1x1 maps,
    are dense in both and match either)."""
    fmt = lambda t: (t.is_contiguous(), t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))  # noqa: E731
    return fmt(a) == fmt(b)


@contextlib.contextmanager
def permuted_program_order(seed: int = 0):
    """Run every interpreted launch's programs in a seeded random order, never the grid order
    (each program still runs exactly once). Results that depend on the order in which programs
    run, such as atomic float adds, change; order-independent ones must not."""
    from triton.runtime import interpreter
    builder = interpreter.interpreter_builder
    original = builder.set_grid_idx
    orders = {}

    def set_grid_idx(x, y, z):
        gx, gy, gz = builder.grid_dim
        total = gx * gy * gz
        if total not in orders:
            perm = list(range(total))
            random.Random(seed * 7919 + total).shuffle(perm)
            if total > 1 and perm == sorted(perm):  # never the grid order itself
                perm.reverse()
            orders[total] = perm
        flat = orders[total][(x * gy + y) * gz + z]
        return original(flat // (gy * gz), (flat // gz) % gy, flat % gz)

    builder.set_grid_idx = set_grid_idx
    try:
        yield
    finally:
        builder.set_grid_idx = original


def pairwise(options: Dict[str, Sequence], valid: Callable[[dict], bool] = lambda c: True,
             seed: int = 0, candidates: int = 60) -> List[dict]:
    """Greedy all-pairs cover (deterministic for a seed); ``valid`` rejects impossible cases."""
    rng = random.Random(seed)
    names = list(options)
    uncovered = set()
    for a, b in itertools.combinations(range(len(names)), 2):
        for i, j in itertools.product(range(len(options[names[a]])), range(len(options[names[b]]))):
            uncovered.add((a, i, b, j))

    def pairs(idx):
        return {(a, idx[a], b, idx[b]) for a, b in itertools.combinations(range(len(names)), 2)}

    def case(idx):
        return {n: options[n][k] for n, k in zip(names, idx)}

    cases = []
    stall = 0
    while uncovered:
        # seed each candidate with one uncovered pair so progress is guaranteed when possible
        a, i, b, j = rng.choice(sorted(uncovered))
        best, best_gain = None, 0
        for _ in range(candidates):
            idx = [rng.randrange(len(options[n])) for n in names]
            idx[a], idx[b] = i, j
            if not valid(case(idx)):
                continue
            gain = len(pairs(idx) & uncovered)
            if gain > best_gain:
                best, best_gain = idx, gain
        if best is None:
            stall += 1
            if stall >= 50:  # a pair no valid case can hold: drop it
                uncovered.discard((a, i, b, j))
                stall = 0
            continue
        stall = 0
        uncovered -= pairs(best)
        cases.append(case(best))
    return cases


def run_cli(capsys, *argv):
    """Run the CLI in this process: (exit status, stdout, stderr)."""
    from triton_dsd import cli
    try:
        code = cli.main(list(argv))
    except SystemExit as e:  # argparse usage errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def case_id(c: dict) -> str:
    return "-".join(f"{k}={getattr(v, '__name__', str(v)).replace('torch.', '').replace(' ', '')}"
                    for k, v in c.items())


def valid_geometry(c: dict) -> bool:
    """'same' and 'causal' padding need stride 1."""
    return not (c.get("padding") in ("same", "causal") and c.get("stride", 1) != 1)


def with_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """nchw: contiguous; cl: channels_last (2D) / channel-last strides (1D); slice: a strided view."""
    if layout == "nchw":
        return x.contiguous()
    if layout == "cl":
        if x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x.transpose(1, 2).contiguous().transpose(1, 2)
    # a non-contiguous view: every other element along the last dim of a wider tensor
    wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype, device=x.device)
    wide[..., ::2] = x
    return wide[..., ::2]


def eager_depthwise(x, w, b, stride, padding, dilation, dim):
    conv = F.conv2d if dim == 2 else F.conv1d
    if padding == "causal":
        x = F.pad(x, (dilation * (w.shape[-1] - 1), 0))
        padding = 0
    return conv(x, w, b, stride, padding, dilation, groups=x.shape[1])


def eager_dsd(x, wd, bd, wp, bp, stride, padding, dilation, dim, dtype):
    """The eager pair in float64, z rounded to ``dtype`` as eager stores it between the stages."""
    z = eager_depthwise(x, wd, bd, stride, padding, dilation, dim)
    z = z.to(dtype).to(torch.float64)
    return (F.conv2d if dim == 2 else F.conv1d)(z, wp, bp)


def tf32_on(dtype) -> bool:
    return TF32 and dtype == torch.float32 and torch.backends.cudnn.allow_tf32


DEPTHWISE_KERNELS = ("depthwise_fwd_kernel", "depthwise_bwd_input_kernel",
                     "depthwise_bwd_weight_kernel", "splitk_reduce_kernel")


def check_depthwise(dim, dtype, layout, N, C, m, K, stride, padding, dilation, bias, extra,
                    deterministic=False, seed=0):
    """The depthwise stage against eager in float64: y, dx, dw, db (and the output format)."""
    g = torch.Generator().manual_seed(seed)
    ks = K if isinstance(K, tuple) else (K,) * dim
    ds = (dilation,) * dim
    spatial = [d * (k - 1) + 1 + e for k, d, e in zip(ks, ds, extra)]
    x = torch.randn(N, C, *spatial, generator=g, dtype=torch.float64).to(dtype)
    w = torch.randn(C * m, 1, *ks, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(C * m, generator=g, dtype=torch.float64).to(dtype) if bias else None
    x = with_layout(x.to(DEVICE), layout).requires_grad_()
    w = w.to(DEVICE).requires_grad_()
    b = b.to(DEVICE).requires_grad_() if bias else None
    fn = triton_dsd.depthwise_conv2d if dim == 2 else triton_dsd.depthwise_conv1d
    y = fn(x, w, b, stride, padding, dilation, deterministic=deterministic)

    xr, wr, br = reference(x), reference(w), reference(b)
    yr = eager_depthwise(xr, wr, br, stride, padding, dilation, dim)
    dy = torch.randn(yr.shape, generator=g, dtype=torch.float64).to(dtype)
    taps = math.prod(ks)
    assert_close(y, yr, dtype, taps, "y")
    if dim == 2:  # the output keeps the input's memory format, as eager's does
        assert same_format(y, yr), f"strides {y.stride()} vs eager {yr.stride()}"
    elif layout == "cl" and C > 1:
        assert y.stride(1) == 1, f"1D channel-last input gave output strides {y.stride()}"
    y.backward(dy.to(DEVICE))
    yr.backward(dy.double())
    pixels = N * math.prod(yr.shape[2:])
    assert_close(x.grad, xr.grad, dtype, taps * m, "dx")
    assert_close(w.grad, wr.grad, dtype, pixels, "dw")
    if bias:
        assert_close(b.grad, br.grad, dtype, pixels, "db")
    assert ran(*DEPTHWISE_KERNELS), "a Triton kernel did not run"


def check_dsd(dim, dtype, layout, N, C, M, m, K, stride, padding, dilation, biases, extra, fused,
              deterministic=False, seed=0):
    """The whole layer against eager in float64: y and all five gradients; the fused forward
    is exactly one launch."""
    g = torch.Generator().manual_seed(seed)
    ks = K if isinstance(K, tuple) else (K,) * dim
    spatial = [dilation * (k - 1) + 1 + e for k, e in zip(ks, extra)]
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    x = with_layout(r(N, C, *spatial).to(DEVICE), layout).requires_grad_()
    params = [r(C * m, 1, *ks), r(C * m) if biases[0] else None,
              r(M, C * m, *(1,) * dim), r(M) if biases[1] else None]
    params = [p.to(DEVICE).requires_grad_() if p is not None else None for p in params]
    fn = triton_dsd.dsd_conv2d if dim == 2 else triton_dsd.dsd_conv1d
    _runtime.LAUNCHES.clear()
    y = fn(x, *params, stride, padding, dilation, fused=fused, deterministic=deterministic)
    if fused:
        assert dict(_runtime.LAUNCHES) == {"dsd_fwd_kernel": 1}, dict(_runtime.LAUNCHES)
    else:
        assert _runtime.LAUNCHES["depthwise_fwd_kernel"] == 1
        assert _runtime.LAUNCHES["pointwise_fwd_kernel"] == 1
    xr = reference(x)
    pr = [reference(p) for p in params]
    eager = lambda *a: eager_dsd(*a, stride, padding, dilation, dim, dtype)  # noqa: E731
    yr = eager(xr, *pr)
    dy = torch.randn(yr.shape, generator=g, dtype=torch.float64).to(dtype)
    ya, grads_a = magnitudes(eager, [xr, *pr], dy.double())
    taps = math.prod(ks)
    tf = tf32_on(dtype)
    assert_close(y, yr, dtype, C * m * taps, "y", tf32=tf, magnitude=ya)
    if dim == 2:
        assert same_format(y, yr), (y.stride(), yr.stride())
    y.backward(dy.to(DEVICE))
    yr.backward(dy.double())
    pixels = N * math.prod(yr.shape[2:])
    assert_close(x.grad, xr.grad, dtype, M * taps * m, "dx", tf32=tf, magnitude=grads_a[0])
    for name, p, q, mag in zip(("dw_weight", "dw_bias", "pw_weight", "pw_bias"), params, pr,
                               grads_a[1:]):
        if p is not None:
            assert_close(p.grad, q.grad, dtype, pixels * (M if name.startswith("dw") else 1),
                         name, tf32=tf, magnitude=mag)
    assert ran("depthwise_bwd_input_kernel", "depthwise_bwd_weight_kernel",
               "pointwise_bwd_weight_kernel", "pointwise_fwd_kernel")
