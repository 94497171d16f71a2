"""Runtime state under every launcher: the interpreter flag, the interpreter's bf16 ``tl.dot``
fix, launch counting and capture, and output poisoning.

Nothing here imports another module of the package.

* :data:`INTERPRET` is ``TRITON_INTERPRET`` as it was when the package was imported. Triton
  reads that variable when a ``@triton.jit`` function is *defined*, so our kernels are either
  interpreted (CPU tensors) or compiled for the GPU for the life of the process.
  :func:`check_interpreter_flag` turns a later change into a clear error.
* Every Triton launch of the package goes through :func:`launch`, which counts launches per
  kernel (tests use :data:`LAUNCHES` to prove a Triton kernel ran), sets FP fusion (FFMA)
  explicitly, and records instead of running while :func:`capture_launches` is active.
* :func:`new_output` allocates kernel outputs, filled with NaN while :data:`POISON` is set
  (tests set it, so an element a kernel forgot to write cannot pass).
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import sys
import threading
import warnings
from typing import List, Optional, Sequence

import torch
import triton.language as tl


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "on", "yes")


#: TRITON_INTERPRET at import time (see the module docstring)
INTERPRET: bool = _env_flag("TRITON_INTERPRET")
#: fill every kernel-written output with NaN before the launch (tests turn this on)
POISON: bool = _env_flag("TRITON_DSD_POISON")
#: launches per kernel name since import (or since the last ``LAUNCHES.clear()``)
LAUNCHES: collections.Counter = collections.Counter()
#: FP fusion (a*b + c as one FFMA) for every kernel of the package. Triton's own default is
#: changing (3.10 turns it off); the kernels are written for FFMA, so it is set at each launch.
FP_FUSION = True

#: per thread: while ``capture`` is not None, launches are recorded there instead of run (see
#: :func:`capture_launches`); other threads keep launching
_LOCAL = threading.local()


class InterpreterFlagChanged(RuntimeError):
    """TRITON_INTERPRET differs from what it was when triton_dsd was imported."""


def check_interpreter_flag() -> None:
    """Raise :class:`InterpreterFlagChanged` if TRITON_INTERPRET changed since import."""
    now = _env_flag("TRITON_INTERPRET")
    if now != INTERPRET:
        raise InterpreterFlagChanged(
            f"triton_dsd: TRITON_INTERPRET is {'set' if now else 'unset'} now but was "
            f"{'set' if INTERPRET else 'unset'} when triton_dsd was imported. Triton decides "
            f"when a kernel is defined whether it is interpreted (CPU) or compiled (GPU), so the "
            f"flag cannot change inside a process: set it before the first `import triton_dsd` "
            f"(e.g. `TRITON_INTERPRET=1 python script.py`), or restart the process.")


def _patch_interpreter_bf16_dot() -> None:
    """The interpreter keeps bf16 as raw uint16 and its ``tl.dot`` multiplies those integers
    (upstream triton-lang/triton#11584). Widen bf16 operands to fp32 first, exactly what the
    tensor cores do with bf16 products. Applied only when interpreting; GPU code is untouched."""
    try:
        from triton.runtime import interpreter as _interp
    except ImportError:  # pragma: no cover - no interpreter in this Triton
        return
    builder = getattr(_interp, "InterpreterBuilder", None)
    if builder is None or getattr(builder.create_dot, "_triton_dsd_bf16", False):
        return
    original = builder.create_dot

    def create_dot(self, a, b, d, *args, **kwargs):
        if a.dtype.scalar == tl.bfloat16:
            a = self.cast_impl(a, tl.float32)
        if b.dtype.scalar == tl.bfloat16:
            b = self.cast_impl(b, tl.float32)
        return original(self, a, b, d, *args, **kwargs)

    create_dot._triton_dsd_bf16 = True
    builder.create_dot = create_dot


if INTERPRET:
    _patch_interpreter_bf16_dot()


@dataclasses.dataclass
class Launch:
    """One recorded launch: the kernel, its grid and arguments, and what dispatch says about
    the config (``meta``: family, key, source)."""
    kernel: object
    grid: tuple
    args: tuple
    kwargs: dict
    meta: dict = dataclasses.field(default_factory=dict)


def _device_of(args) -> Optional[torch.device]:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device
    return None


def launch(kernel, grid, *args, **kwargs) -> None:
    """The one place a kernel of the package is launched (or recorded, under capture).

    FP fusion is set explicitly, and a launch on a CUDA tensor runs with that tensor's device
    current (Triton launches on the current device: a model on cuda:1 must not run on cuda:0).
    """
    kwargs.setdefault("enable_fp_fusion", FP_FUSION)
    captured = getattr(_LOCAL, "capture", None)
    if captured is not None:
        captured.append(Launch(kernel, grid, args, kwargs))
        return
    LAUNCHES[kernel.fn.__name__] += 1
    dev = _device_of(args)
    if dev is not None and dev.type == "cuda" and dev.index is not None \
            and dev.index != torch.cuda.current_device():
        with torch.cuda.device(dev):
            kernel[grid](*args, **kwargs)
    else:
        kernel[grid](*args, **kwargs)


def capturing() -> bool:
    """True inside :func:`capture_launches` on this thread (nothing runs, nothing is timed)."""
    return getattr(_LOCAL, "capture", None) is not None


def captured() -> Optional[List[Launch]]:
    """The list this thread is recording into, or None."""
    return getattr(_LOCAL, "capture", None)


@contextlib.contextmanager
def capture_launches():
    """Record a :class:`Launch` for every launch on this thread instead of running it.

    The offline compile report and ``tuning.chosen_config`` use it to see exactly what a
    launcher would launch.
    """
    saved = getattr(_LOCAL, "capture", None)
    _LOCAL.capture = []
    try:
        yield _LOCAL.capture
    finally:
        _LOCAL.capture = saved


def new_output(shape: Sequence[int], like: torch.Tensor, channels_last: bool,
               dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Allocate a 4D (N, C, H, W) output in NCHW or channels_last order (poisoned if POISON)."""
    n, c, h, w = shape
    dtype = dtype or like.dtype
    if channels_last:
        out = torch.empty((n, h, w, c), dtype=dtype, device=like.device).permute(0, 3, 1, 2)
    else:
        out = torch.empty((n, c, h, w), dtype=dtype, device=like.device)
    if POISON and out.dtype.is_floating_point and not out.is_meta:
        out.fill_(float("nan"))
    return out


#: the SM count the offline tools (compile report, performance model) plan grids for: under
#: :func:`capture_launches` on CPU tensors, launchers size their grids for an H200
MODEL_SMS = 132


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; MODEL_SMS when capturing launches on CPU
    tensors (the grid a GPU would get); 1 elsewhere."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return MODEL_SMS if capturing() else 1


# ----------------------------------------------------------------------------- warnings
_WARNED: set = set()
_HERE = os.path.dirname(os.path.abspath(__file__))
#: frames in these folders are ours or the frameworks': a warning points past them
_INTERNAL = tuple(d + os.sep for d in (
    _HERE, os.path.join(os.path.dirname(_HERE), "kernels"),  # the source checkout's kernels/
    os.path.dirname(os.path.abspath(torch.__file__)),
    os.path.dirname(os.path.dirname(os.path.abspath(tl.__file__)))))


def _user_stacklevel() -> int:
    """The stacklevel of the first frame outside triton_dsd, torch and triton (the user's
    call), counted from the caller of :func:`warn_once`."""
    frame, level = sys._getframe(2), 2
    while frame is not None:
        name = os.path.abspath(frame.f_code.co_filename)
        internal = (name.startswith(_INTERNAL) or frame.f_code.co_filename.startswith("<frozen")
                    or os.path.basename(name) in ("contextlib.py", "functools.py"))
        if not internal:
            return level
        frame, level = frame.f_back, level + 1
    return 2


def warn_once(tag, message: str, category=RuntimeWarning) -> None:
    """Warn once per process per ``tag``, pointing at the user's line, not ours."""
    if tag in _WARNED:
        return
    _WARNED.add(tag)
    warnings.warn(message, category, stacklevel=_user_stacklevel())


def forget_warnings() -> None:
    """Let every warning be issued again (tests; after the store changed)."""
    _WARNED.clear()
