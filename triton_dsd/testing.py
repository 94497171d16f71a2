"""Test and check helpers shared by the test suite, the CLI checks and the GPU script.

The reference is always eager PyTorch computed in float64 on the CPU, from the very values the
kernel saw (low-precision inputs are upcast, not regenerated), so a comparison measures only the
kernel's own error: fp32 accumulation and the final rounding to the output dtype.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

#: relative tolerance per dtype (of the largest reference magnitude), before length scaling
_BASE_RTOL = {
    torch.float64: 1e-12,
    torch.float32: 2e-6,
    torch.float16: 2e-3,
    torch.bfloat16: 1.6e-2,
}


def tolerance(dtype: torch.dtype, reduction_len: int = 1, tf32: bool = False) -> float:
    """Relative tolerance for a result of ``dtype`` that sums ``reduction_len`` products.

    Low-precision results are dominated by the final rounding (2^-11 fp16, 2^-8 bf16); fp32 and
    fp64 by the accumulation, which grows like sqrt(reduction_len) for random data.
    """
    base = 3e-4 if (tf32 and dtype == torch.float32) else _BASE_RTOL[dtype]
    return base * (1.0 + math.sqrt(max(reduction_len, 1)) / 8.0)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype,
                 reduction_len: int = 1, name: str = "result", tf32: bool = False,
                 magnitude: Optional[torch.Tensor] = None) -> None:
    """``actual`` equals the float64 ``expected`` within the dtype's tolerance; NaN never passes
    unless the reference has a NaN in the same place.

    The tolerance is relative to the largest reference value, or, when given, to the largest
    ``magnitude``: the same computation on absolute values (sum of |terms|), which is what
    rounding errors scale with when terms cancel."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    assert torch.equal(nan_a, nan_e), f"{name}: NaN pattern differs ({int(nan_a.sum())} vs {int(nan_e.sum())} NaNs)"
    fin = torch.isfinite(e)
    assert torch.equal(a[~fin & ~nan_e], e[~fin & ~nan_e]), f"{name}: infinities differ"
    if not bool(fin.any()):
        return
    scale = float(e[fin].abs().max().clamp_min(1e-30))
    if magnitude is not None:
        mag = magnitude.detach().to("cpu", torch.float64).abs()
        mag = mag[torch.isfinite(mag)]
        if mag.numel():
            scale = max(scale, float(mag.max()))
    err = float((a[fin] - e[fin]).abs().max())
    tol = tolerance(dtype, reduction_len, tf32) * scale
    assert err <= tol, (f"{name}: max abs error {err:.3e} > tolerance {tol:.3e} "
                        f"({dtype}, reduction length {reduction_len}, max |ref| {scale:.3e})")


def magnitudes(fn, inputs, grad_out: torch.Tensor):
    """The output and input gradients of ``fn`` on |inputs| with |grad_out|: per element, the
    sum of the absolute values of the terms the real computation adds (tolerance scales)."""
    leaves = [None if t is None else t.detach().abs().requires_grad_(t.requires_grad)
              for t in inputs]
    out = fn(*leaves)
    out.backward(grad_out.detach().abs().to(out.dtype))
    return out.detach(), [None if t is None else t.grad for t in leaves]


def reference(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A float64 CPU leaf copy of ``t`` (requires_grad as ``t``) for the eager reference."""
    if t is None:
        return None
    return t.detach().to("cpu", torch.float64).requires_grad_(t.requires_grad)
