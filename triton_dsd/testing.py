"""Test and check helpers shared by the test suite, the CLI checks and the GPU script.

The reference is always eager PyTorch computed in float64 on the CPU, from the very values the
kernel saw (low-precision inputs are upcast, not regenerated), so a comparison measures only the
kernel's own error: fp32 accumulation and the final rounding to the output dtype.
"""
from __future__ import annotations

import contextlib
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


# ----------------------------------------------------------------------------- request counter
class Requests:
    """What one interpreted launch loaded: for each tensor argument (by parameter name), how
    many times active lanes (mask true) loaded each of its elements."""

    def __init__(self, kernel: str):
        self.kernel = kernel
        self.tensors = {}  # name -> host tensor the interpreter ran on
        self._addresses = []  # numpy arrays of the byte addresses loaded by active lanes
        self.counts = {}  # name -> int64 tensor shaped like the argument

    def _finish(self) -> None:
        import numpy as np

        loaded = (np.concatenate(self._addresses) if self._addresses
                  else np.zeros(0, dtype=np.uint64)).astype(np.int64)
        self._addresses = []
        for name, t in self.tensors.items():
            storage = t.untyped_storage()
            base, size = storage.data_ptr(), storage.nbytes() // t.element_size()
            rel = loaded - base
            inside = rel[(rel >= 0) & (rel < size * t.element_size())] // t.element_size()
            per_elem = torch.from_numpy(np.bincount(inside, minlength=size).astype(np.int64))
            offsets = torch.as_strided(torch.arange(size), t.shape, t.stride(),
                                       t.storage_offset())
            self.counts[name] = per_elem[offsets]

    def total(self, name: str) -> int:
        """Loads of any element of argument ``name`` by active lanes."""
        return int(self.counts[name].sum())

    def per_element(self, name: str) -> float:
        """Mean loads per element of argument ``name``."""
        c = self.counts[name]
        return float(c.sum()) / max(1, c.numel())

    def __repr__(self) -> str:
        per = ", ".join(f"{k}: {self.per_element(k):.2f}" for k in self.counts)
        return f"Requests({self.kernel}: {per})"


@contextlib.contextmanager
def count_requests():
    """Under ``TRITON_INTERPRET=1``, record a :class:`Requests` for every launch in the block
    (a list, in launch order): the interpreter's masked loads are wrapped, each address loaded
    by an active lane is attributed to the tensor argument whose storage holds it.

    This is the algorithm's request count (the program text's loads); on a GPU a layout that
    replicates a tile across warps loads more, which only the SASS shows."""
    from triton.runtime import interpreter

    builder, executor = interpreter.InterpreterBuilder, interpreter.GridExecutor
    orig_load, orig_init, orig_call = (builder.create_masked_load, executor._init_args_hst,
                                       executor.__call__)
    records = []
    state = {"current": None}

    def create_masked_load(self, ptrs, mask, *args, **kwargs):
        rec = state["current"]
        if rec is not None:
            rec._addresses.append(ptrs.data[mask.data.astype(bool)].ravel().copy())
        return orig_load(self, ptrs, mask, *args, **kwargs)

    def init_args(self, args_dev, kwargs):
        args_hst, kwargs_hst = orig_init(self, args_dev, kwargs)
        rec = state["current"]
        if rec is not None:
            for name, arg in zip(self.arg_names, args_hst):
                if isinstance(arg, torch.Tensor):
                    rec.tensors[name] = arg
        return args_hst, kwargs_hst

    def call(self, *args, **kwargs):
        rec = Requests(self.fn.__name__)
        state["current"] = rec
        try:
            return orig_call(self, *args, **kwargs)
        finally:
            state["current"] = None
            rec._finish()
            records.append(rec)

    builder.create_masked_load, executor._init_args_hst, executor.__call__ = (
        create_masked_load, init_args, call)
    try:
        yield records
    finally:
        builder.create_masked_load, executor._init_args_hst, executor.__call__ = (
            orig_load, orig_init, orig_call)
