"""Argument checks of the tensors, written once for every public entry point (the geometry
arguments, padding and output sizes are checked in ``shapes.py``).

Every check raises before any kernel launch, with a message that names the argument.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INPUT_NAMES = {1: "(N, C, L) (or unbatched (C, L))", 2: "(N, C, H, W) (or unbatched (C, H, W))"}


def check_tensor(where: str, name: str, t, ndim: Optional[int] = None,
                 what: str = "") -> torch.Tensor:
    """A floating tensor of the given rank on a supported device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{where}: `{name}` must be a torch.Tensor; got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{where}: `{name}` must be a {ndim}D tensor {what}; got shape "
                         f"{tuple(t.shape)} ({t.dim()}D)")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{where}: `{name}` must be float16, bfloat16, float32 or float64; "
                        f"got {t.dtype}")
    if t.device.type not in ("cuda", "cpu"):
        raise ValueError(f"{where}: `{name}` is on device '{t.device}'; triton_dsd computes on "
                         f"CUDA tensors (and on CPU tensors, eagerly or under TRITON_INTERPRET=1)")
    return t


def check_same(where: str, ref_name: str, ref: torch.Tensor, name: str,
               t: Optional[torch.Tensor]) -> None:
    """``t`` has the dtype and device of ``ref``."""
    if t is None:
        return
    if t.dtype != ref.dtype:
        raise TypeError(f"{where}: `{name}` has dtype {t.dtype} but `{ref_name}` has {ref.dtype}; "
                        f"they must match")
    if t.device != ref.device:
        raise ValueError(f"{where}: `{name}` is on {t.device} but `{ref_name}` is on {ref.device}; "
                         f"they must be on the same device")


def check_depthwise(where: str, x, weight, bias, n_spatial: int, w_name: str = "weight",
                    b_name: str = "bias") -> Tuple[int, int]:
    """Checks x (N, C, *spatial), weight (C*m, 1, *k), bias (C*m,); returns (C, m)."""
    check_input(where, x, n_spatial)
    wnames = "(C*m, 1, K)" if n_spatial == 1 else "(C*m, 1, kH, kW)"
    check_tensor(where, w_name, weight, n_spatial + 2, wnames)
    check_same(where, "x", x, w_name, weight)
    C = x.shape[1]
    if C < 1:
        raise ValueError(f"{where}: `x` must have at least one channel; got shape {tuple(x.shape)}")
    cm = weight.shape[0]
    if weight.shape[1] != 1 or cm < C or cm % C != 0 or any(k < 1 for k in weight.shape[2:]):
        raise ValueError(f"{where}: `{w_name}` must have shape {wnames} with C*m a multiple of "
                         f"x's C={C} and every k >= 1; got {tuple(weight.shape)}")
    if bias is not None:
        check_tensor(where, b_name, bias, 1, f"({cm},)")
        check_same(where, "x", x, b_name, bias)
        if bias.shape[0] != cm:
            raise ValueError(f"{where}: `{b_name}` must have shape ({cm},) to match `{w_name}`; "
                             f"got {tuple(bias.shape)}")
    return C, cm // C


def check_input(where: str, x, n_spatial: int) -> None:
    """A batched input: a floating tensor of rank n_spatial + 2 (the functional API has added
    the batch axis of an unbatched input before this check)."""
    check_tensor(where, "x", x, n_spatial + 2, _INPUT_NAMES[n_spatial])


def check_layer_input(where: str, x, in_channels: int, n_spatial: int) -> None:
    """A layer's input, batched or not, whose channel count is ``in_channels``."""
    check_tensor(where, "x", x, None)
    if x.dim() not in (n_spatial + 1, n_spatial + 2):
        raise ValueError(f"{where}: `x` must be a {n_spatial + 2}D tensor "
                         f"{_INPUT_NAMES[n_spatial]}; got shape {tuple(x.shape)} ({x.dim()}D)")
    c = x.shape[-n_spatial - 1]
    if c != in_channels:
        raise ValueError(f"{where}: `x` has {c} channels (shape {tuple(x.shape)}) but the "
                         f"layer has in_channels={in_channels}")


def check_pointwise(where: str, C: int, weight, bias, n_spatial: int, ref_name: str,
                    ref: torch.Tensor, w_name: str = "weight", b_name: str = "bias") -> int:
    """Checks a 1x1 conv weight (M, C, 1[, 1]) for an input of C channels and its bias (M,),
    both of ``ref``'s dtype and device; returns M."""
    ones = ", 1" * n_spatial
    check_tensor(where, w_name, weight, n_spatial + 2, f"(M, C{ones})")
    check_same(where, ref_name, ref, w_name, weight)
    if weight.shape[1] != C or weight.shape[0] < 1 or any(k != 1 for k in weight.shape[2:]):
        raise ValueError(f"{where}: `{w_name}` must have shape (M, {C}{ones}) for an input of "
                         f"{C} channels; got {tuple(weight.shape)}")
    M = weight.shape[0]
    if bias is not None:
        check_tensor(where, b_name, bias, 1, f"({M},)")
        check_same(where, ref_name, ref, b_name, bias)
        if bias.shape[0] != M:
            raise ValueError(f"{where}: `{b_name}` must have shape ({M},) to match `{w_name}`; "
                             f"got {tuple(bias.shape)}")
    return M


def check_channel_vector(where: str, name: str, t, channels: int, ref: torch.Tensor,
                         what: str) -> None:
    """A per-channel epilogue vector (scale or shift): a floating 1D tensor of ``channels``
    elements on ``ref``'s device (any floating dtype: it is used in the accumulator dtype)."""
    if t is None:
        return
    check_tensor(where, name, t, 1, f"({channels},), one per {what}")
    if t.shape[0] != channels:
        raise ValueError(f"{where}: `{name}` must have shape ({channels},), one per {what}; got "
                         f"{tuple(t.shape)}")
    if t.device != ref.device:
        raise ValueError(f"{where}: `{name}` is on {t.device} but `x` is on {ref.device}; they "
                         f"must be on the same device")
