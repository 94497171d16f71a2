"""Geometry, written once: int/tuple arguments, padding ('same', 'valid', 'causal', ints,
tuples), output sizes and memory format.

Every part of the package that needs one of these (argument checks, launchers, ops, problems,
bench, cost, plots) calls this module, so they all describe the same problem: padding is
resolved to explicit (low, high) pairs per spatial dimension, flattened as (top, bottom, left,
right) in 2D and (left, right) in 1D. 'same' pads d*(k-1) in total with the extra element of an
even kernel at the high end, as PyTorch does; 'causal' (1D) pads d*(k-1) at the low end.
'tf_same' is TensorFlow's "SAME" (timm's ``Conv2dSame``): any stride, the output is
ceil(size / stride), and the padding depends on the input size, max((ceil(i/s) - 1)*s +
(k-1)*d + 1 - i, 0) in total with the odd element at the high end.
"""
from __future__ import annotations

import numbers
from typing import Optional, Sequence, Tuple, Union

import torch

Padding = Union[str, int, Sequence[int]]

PADDING_STRINGS = {1: ("same", "valid", "causal", "tf_same"), 2: ("same", "valid", "tf_same")}


def is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def int_tuple(where: str, name: str, value, n: int) -> Tuple[int, ...]:
    """An int or a length-n (or length-1) tuple/list of ints, as a length-n tuple.

    TypeError / ValueError naming ``name`` otherwise."""
    if is_int(value):
        return (int(value),) * n
    if isinstance(value, (tuple, list)) and all(is_int(v) for v in value):
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


def check_padding_spec(where: str, padding: Padding, n: int, stride: Sequence[int]) -> None:
    """Validate a padding argument without resolving it (constructors use this)."""
    if isinstance(padding, str):
        allowed = PADDING_STRINGS[n]
        if padding not in allowed:
            hint = " ('causal' is for 1D only)" if padding == "causal" else ""
            raise ValueError(f"{where}: `padding` must be an int, a tuple of {n} ints or one of "
                             f"{allowed}{hint}; got {padding!r}")
        if padding in ("same", "causal") and any(s != 1 for s in stride):
            raise ValueError(f"{where}: `padding`='{padding}' needs stride 1; got stride "
                             f"{tuple(stride)}")
        return
    pads = int_tuple(where, "padding", padding, n)
    if any(p < 0 for p in pads):
        raise ValueError(f"{where}: `padding` must be >= 0; got {padding!r}")


def tf_same_pads(spatial: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                 dilation: Sequence[int]) -> Tuple[int, ...]:
    """TensorFlow "SAME" padding of an input of size ``spatial``, (lo, hi) per dim, flattened."""
    out = []
    for i, k, s, d in zip(spatial, kernel, stride, dilation):
        total = max((-(-i // s) - 1) * s + (k - 1) * d + 1 - i, 0)
        out += [total // 2, total - total // 2]
    return tuple(out)


def resolve_padding(padding: Padding, kernel: Sequence[int], stride: Sequence[int],
                    dilation: Sequence[int], where: str = "triton_dsd",
                    spatial: Optional[Sequence[int]] = None) -> Tuple[int, ...]:
    """Padding -> (lo, hi) per spatial dim, flattened (see the module docstring); 'tf_same'
    needs the input's ``spatial`` size."""
    n = len(kernel)
    check_padding_spec(where, padding, n, stride)
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * (2 * n)
        if padding == "tf_same":
            if spatial is None:
                raise ValueError(f"{where}: `padding`='tf_same' depends on the input size; "
                                 f"there is none here")
            return tf_same_pads(spatial, kernel, stride, dilation)
        out = []
        for k, d in zip(kernel, dilation):
            total = causal_pad(k, d)  # 'same' pads as much, split
            lo = total if padding == "causal" else total // 2
            out += [lo, total - lo]
        return tuple(out)
    return tuple(v for p in int_tuple(where, "padding", padding, n) for v in (p, p))


def causal_pad(kernel_size: int, dilation: int) -> int:
    """The left padding of a causal 1D conv: d*(k-1) (output length = input length)."""
    return dilation * (kernel_size - 1)


def out_size(size: int, k: int, s: int, d: int, pad_lo: int, pad_hi: int) -> int:
    """Output length of a conv along one dimension."""
    return (size + pad_lo + pad_hi - d * (k - 1) - 1) // s + 1


def out_sizes(spatial: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
              pads: Sequence[int], dilation: Sequence[int]) -> Tuple[int, ...]:
    """Output sizes of a conv; ``pads`` flattened (lo, hi) per dimension."""
    return tuple(out_size(size, k, s, d, pads[2 * i], pads[2 * i + 1])
                 for i, (size, k, s, d) in enumerate(zip(spatial, kernel, stride, dilation)))


def check_out_sizes(where: str, spatial: Sequence[int], kernel: Sequence[int],
                    stride: Sequence[int], pads: Sequence[int],
                    dilation: Sequence[int]) -> Tuple[int, ...]:
    """:func:`out_sizes`, with a ValueError naming `x` when an output would be empty."""
    out = out_sizes(spatial, kernel, stride, pads, dilation)
    for i, (o, size, k, d) in enumerate(zip(out, spatial, kernel, dilation)):
        if o < 1:
            lo, hi = pads[2 * i], pads[2 * i + 1]
            raise ValueError(
                f"{where}: the output would be empty along spatial dim {i} (size {o}): `x` has "
                f"size {size} there, padded to {size + lo + hi}, but the dilated kernel spans "
                f"{d * (k - 1) + 1} (kernel_size {k}, dilation {d}); enlarge the input or the "
                f"padding")
    return out


def is_channels_last_2d(t: torch.Tensor) -> bool:
    """The memory format eager convolution gives its output for input ``t`` (N, C, H, W).

    Follows c10's stride rule (``is_channels_last_strides_2d``): strides must grow in the
    order C, W, H, N. Ambiguous tensors (C == 1 or H == W == 1) keep what their strides say.
    """
    if t.dim() != 4 or t.stride(1) == 0:
        return False
    lo = 0
    for d in (1, 3, 2, 0):
        if t.size(d) == 0 or t.stride(d) < lo:
            return False
        if d == 0 and lo == t.stride(1):
            return False
        lo = t.stride(d) * (t.size(d) if t.size(d) > 1 else 1)
    return True


def layout_name(channels_last: bool) -> str:
    """The layout field of problem keys and benchmark rows."""
    return "cl" if channels_last else "nchw"
