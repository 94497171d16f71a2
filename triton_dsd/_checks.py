"""Argument checks and padding resolution, written once for every public entry point.

Every check raises before any kernel launch, with a message that names the argument.
"""
from __future__ import annotations

import numbers
from typing import Optional, Sequence, Tuple, Union

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
PADDING_STRINGS_2D = ("same", "valid")
PADDING_STRINGS_1D = ("same", "valid", "causal")


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def int_tuple(where: str, name: str, value, n: int) -> Tuple[int, ...]:
    """An int or a length-n tuple/list of ints, as a tuple (TypeError/ValueError naming ``name``)."""
    if _is_int(value):
        return (int(value),) * n
    if isinstance(value, (tuple, list)) and all(_is_int(v) for v in value):
        if len(value) == 1:
            return (int(value[0]),) * n
        if len(value) == n:
            return tuple(int(v) for v in value)
        raise ValueError(f"{where}: `{name}` must be an int or a tuple of {n} ints; got {value!r}")
    raise TypeError(f"{where}: `{name}` must be an int or a tuple of {n} ints; got {value!r}")


def positive_tuple(where: str, name: str, value, n: int) -> Tuple[int, ...]:
    out = int_tuple(where, name, value, n)
    if any(v <= 0 for v in out):
        raise ValueError(f"{where}: every `{name}` must be >= 1; got {value!r}")
    return out


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


def resolve_padding(where: str, padding: Union[str, int, Sequence[int]], kernel: Sequence[int],
                    stride: Sequence[int], dilation: Sequence[int]) -> Tuple[int, ...]:
    """Padding -> (lo, hi) per spatial dim, flattened: (top, bottom, left, right) in 2D, (left, right) in 1D.

    'same' pads d*(k-1) in total, the extra element (even k) at the end, as PyTorch does;
    'causal' (1D only) pads d*(k-1) on the left.
    """
    n = len(kernel)
    if isinstance(padding, str):
        allowed = PADDING_STRINGS_1D if n == 1 else PADDING_STRINGS_2D
        if padding not in allowed:
            hint = " ('causal' is for 1D only)" if padding == "causal" else ""
            raise ValueError(f"{where}: `padding` must be an int, a tuple of {n} ints or one of "
                             f"{allowed}{hint}; got {padding!r}")
        if padding == "valid":
            return (0,) * (2 * n)
        if any(s != 1 for s in stride):
            raise ValueError(f"{where}: `padding`='{padding}' needs stride 1; got stride "
                             f"{tuple(stride)}")
        out = []
        for k, d in zip(kernel, dilation):
            total = d * (k - 1)
            lo = total if padding == "causal" else total // 2
            out += [lo, total - lo]
        return tuple(out)
    pads = int_tuple(where, "padding", padding, n)
    if any(p < 0 for p in pads):
        raise ValueError(f"{where}: `padding` must be >= 0; got {padding!r}")
    return tuple(v for p in pads for v in (p, p))


def output_sizes(where: str, spatial: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                 pads: Sequence[int], dilation: Sequence[int]) -> Tuple[int, ...]:
    out = []
    for i, (size, k, s, d) in enumerate(zip(spatial, kernel, stride, dilation)):
        lo, hi = pads[2 * i], pads[2 * i + 1]
        o = (size + lo + hi - d * (k - 1) - 1) // s + 1
        if o < 1:
            raise ValueError(
                f"{where}: the output would be empty along spatial dim {i} (size {o}): `x` has "
                f"size {size} there, padded to {size + lo + hi}, but the dilated kernel spans "
                f"{d * (k - 1) + 1} (kernel_size {k}, dilation {d}); enlarge the input or the "
                f"padding")
        out.append(o)
    return tuple(out)


def check_depthwise(where: str, x, weight, bias, n_spatial: int, w_name: str = "weight",
                    b_name: str = "bias") -> Tuple[int, int]:
    """Checks x (N, C, *spatial), weight (C*m, 1, *k), bias (C*m,); returns (C, m)."""
    names = "(N, C, L)" if n_spatial == 1 else "(N, C, H, W)"
    check_tensor(where, "x", x, n_spatial + 2, names)
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


def check_layer_input(where: str, x, in_channels: int, n_spatial: int) -> None:
    """A layer's input: a tensor of rank n_spatial + 2 whose channel count is ``in_channels``."""
    names = "(N, C, L)" if n_spatial == 1 else "(N, C, H, W)"
    check_tensor(where, "x", x, n_spatial + 2, names)
    if x.shape[1] != in_channels:
        raise ValueError(f"{where}: `x` has {x.shape[1]} channels (shape {tuple(x.shape)}) but the "
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
