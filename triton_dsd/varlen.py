"""Packed variable-length 1D batches (``cu_seqlens``), as flash-attn packs them.

B sequences of lengths L_0..L_{B-1} lie one after another along the time axis of one tensor
x (1, C, T) (or unbatched (C, T)), T = sum L_i; ``cu_seqlens`` (int32/int64, B+1 offsets,
``cu_seqlens[0] == 0``, non-decreasing, ``cu_seqlens[-1] == T``) says where: sequence i is
frames ``[cu_seqlens[i], cu_seqlens[i+1])``. A convolution over the pack is the convolution
of each sequence on its own: no tap crosses a sequence boundary, each sequence gets the
padding at its own two ends, and its outputs are frames ``[cu_out[i], cu_out[i+1])`` of the
output, ``cu_out = conv1d_out_cu_seqlens(cu_seqlens, kernel_size, stride, padding,
dilation)`` (``cu_out == cu_seqlens`` for stride 1 with 'same' / 'causal' padding). An empty
sequence (L_i = 0) has an empty output, whatever the padding.

How (the functional API runs this around ONE launch of the ordinary op): an index map places
each sequence's frames into a padded pack, sequence i as pad_lo zeros, its L_i frames, pad_hi
zeros, rounded up to a multiple of the stride so that every sequence starts on an output
frame; the op runs on that pack with padding 0, and each sequence's valid outputs are
gathered from its result. The copy in (``index_copy``) and the gather out (``index_select``
with unique indices) are differentiable with deterministic backwards. Cost: one extra copy of
the input (T + B*(pad_lo+pad_hi) frames, plus at most stride-1 per sequence) and one of the
output, each way, and the kernel's work on the B*(pad_lo+pad_hi) padding frames.

Validation (:func:`check`) needs the offsets' values, so it reads ``cu_seqlens`` once on the
host (one device sync per call); under ``torch.compile`` the value checks are skipped (the
type, rank and device checks stay). The index maps are built on x's device with vectorised
torch ops; for stride 1 and length-preserving padding ('same', 'causal', or int p with
2p = dilation*(K-1)) their sizes depend only on T and B, so that case traces with
``torch.compile(fullgraph=True)``.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from triton_dsd import shapes

_INT_DTYPES = (torch.int32, torch.int64)


class Plan(NamedTuple):
    """Where the frames go: ``dest`` (T,) the buffer position of each input frame, ``length``
    the padded buffer's length, ``gather`` (T_out,) the position of each output frame in the
    buffer's output, ``cu_out`` (B+1,) int64 the output offsets."""
    dest: Tensor
    length: int
    gather: Tensor
    cu_out: Tensor


def _conv_args(where: str, kernel_size, stride, padding, dilation) -> Tuple[int, int, int]:
    K = shapes.positive_tuple(where, "kernel_size", kernel_size, 1)[0]
    s = shapes.positive_tuple(where, "stride", stride, 1)[0]
    d = shapes.positive_tuple(where, "dilation", dilation, 1)[0]
    shapes.check_padding_spec(where, padding, 1, (s,))
    return K, s, d


def _norm_padding(padding, s: int):
    """'tf_same' at stride 1 is 'same' (d*(K-1) in total, the odd element at the end)."""
    return "same" if padding == "tf_same" and s == 1 else padding


def _per_sequence(lens: Tensor, K: int, s: int, d: int, padding):
    """(pad_lo, pad_hi, out_len) per sequence for lengths ``lens`` (int64): ints where they
    do not depend on the length, else tensors; out_len is 0 for an empty sequence and may be
    < 1 for int/'valid' padding (the caller refuses that)."""
    span = d * (K - 1) + 1
    if padding == "tf_same":  # TensorFlow "SAME": from each sequence's own length
        ceil = torch.div(lens + s - 1, s, rounding_mode="floor")
        total = ((ceil - 1) * s + span - lens).clamp_min(0)
        lo = torch.div(total, 2, rounding_mode="floor")
        hi = total - lo
    else:
        lo, hi = shapes.resolve_padding(padding, (K,), (s,), (d,))
    out = torch.div(lens + lo + hi - span, s, rounding_mode="floor") + 1
    out = torch.where(lens > 0, out, torch.zeros_like(out))
    return lo, hi, out


def _length_preserving(K: int, s: int, d: int, padding) -> bool:
    """Stride 1 and pad_lo + pad_hi == d*(K-1): every output length equals its input's."""
    if s != 1 or padding == "tf_same":
        return False
    lo, hi = shapes.resolve_padding(padding, (K,), (s,), (d,))
    return lo + hi == d * (K - 1)


def check_tensor(where: str, cu_seqlens, device: Optional[torch.device] = None) -> None:
    """``cu_seqlens`` is a 1D int32/int64 tensor of at least 2 offsets (on ``device``)."""
    if not isinstance(cu_seqlens, Tensor):
        raise TypeError(f"{where}: `cu_seqlens` must be a 1D int32/int64 torch.Tensor of B+1 "
                        f"sequence offsets; got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in _INT_DTYPES:
        raise TypeError(f"{where}: `cu_seqlens` must be an int32 or int64 tensor (B+1 "
                        f"sequence offsets); got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"{where}: `cu_seqlens` must be a 1D tensor of B+1 >= 2 offsets "
                         f"[0, L_0, L_0+L_1, ..., T]; got shape {tuple(cu_seqlens.shape)}")
    if device is not None and cu_seqlens.device != device:
        raise ValueError(f"{where}: `cu_seqlens` is on {cu_seqlens.device} but `x` is on "
                         f"{device}; they must be on the same device")


def check(where: str, cu_seqlens: Tensor, T: Optional[int], K: int, s: int, d: int,
          padding) -> Tensor:
    """The offsets' values (read once on the host): start at 0, non-decreasing, end at T
    (when given), and every non-empty sequence has a non-empty output. Returns the host
    offsets (int64)."""
    host = cu_seqlens.detach().to("cpu", torch.int64)
    if int(host[0]) != 0:
        raise ValueError(f"{where}: `cu_seqlens` must start at 0 (sequence i is frames "
                         f"[cu_seqlens[i], cu_seqlens[i+1])); got cu_seqlens[0] = "
                         f"{int(host[0])}")
    lens = host[1:] - host[:-1]
    bad = torch.nonzero(lens < 0)
    if bad.numel():
        i = int(bad[0])
        raise ValueError(f"{where}: `cu_seqlens` must be non-decreasing (sorted offsets); "
                         f"cu_seqlens[{i + 1}] = {int(host[i + 1])} < cu_seqlens[{i}] = "
                         f"{int(host[i])}")
    if T is not None and int(host[-1]) != T:
        raise ValueError(f"{where}: `cu_seqlens[-1]` must be the total length T = {T} of "
                         f"`x`'s last axis (the sequences tile it); got {int(host[-1])}")
    lo, hi, out = _per_sequence(lens, K, s, d, padding)
    bad = torch.nonzero((lens > 0) & (out < 1))
    if bad.numel():
        i = int(bad[0])
        L = int(lens[i])
        plo = lo if isinstance(lo, int) else int(lo[i])
        phi = hi if isinstance(hi, int) else int(hi[i])
        raise ValueError(
            f"{where}: sequence {i} of `cu_seqlens` (frames [{int(host[i])}, "
            f"{int(host[i + 1])})) has length {L}, padded to {L + plo + phi} with "
            f"padding={padding!r}, but the dilated kernel spans {d * (K - 1) + 1} (kernel_size "
            f"{K}, dilation {d}): its output would be empty, as F.conv1d refuses it; use "
            f"padding='same' or 'causal', more padding, or drop that sequence")
    return host


def conv1d_out_cu_seqlens(cu_seqlens: Tensor, kernel_size: int, stride: int = 1,
                          padding: shapes.Padding = 0, dilation: int = 1) -> Tensor:
    """The output offsets of a 1D convolution over a packed batch: sequence i's outputs are
    frames ``[cu_out[i], cu_out[i+1])`` of ``depthwise_conv1d`` / ``dsd_conv1d`` (and the
    layers) called with ``cu_seqlens``.

    Each sequence of length L > 0 gives ``(L + pad_lo + pad_hi - dilation*(kernel_size-1) -
    1) // stride + 1`` frames (F.conv1d's length, with 'same'/'causal'/'tf_same' resolved per
    sequence), an empty one none. For stride 1 with 'same' or 'causal' padding this is
    ``cu_seqlens`` itself. Returns a tensor of ``cu_seqlens``'s dtype and device. ValueError
    (naming the sequence) if a non-empty sequence's output would be empty, or the offsets
    are not valid offsets (start 0, non-decreasing).
    """
    where = "triton_dsd.conv1d_out_cu_seqlens"
    check_tensor(where, cu_seqlens)
    K, s, d = _conv_args(where, kernel_size, stride, padding, dilation)
    padding = _norm_padding(padding, s)
    if not torch.compiler.is_compiling():
        check(where, cu_seqlens, None, K, s, d, padding)
    cu = cu_seqlens.to(torch.int64)
    _, _, out = _per_sequence(cu[1:] - cu[:-1], K, s, d, padding)
    return torch.cat([cu.new_zeros(1), torch.cumsum(out, 0)]).to(cu_seqlens.dtype)


def plan(where: str, x: Tensor, cu_seqlens, kernel_size: int, stride, padding,
         dilation) -> Plan:
    """Check ``cu_seqlens`` for a batched 1D input ``x`` (1, C, T) and build the index maps
    (see the module docstring). Raises before anything runs."""
    check_tensor(where, cu_seqlens, x.device)
    if x.shape[0] != 1:
        raise ValueError(f"{where}: with `cu_seqlens`, the sequences are packed along the last "
                         f"axis of one batch element: `x` must be (1, C, T) or (C, T); got "
                         f"shape {tuple(x.shape)}; pack the batch with x.transpose(0, 1)."
                         f"reshape(C, -1) and its offsets")
    K, s, d = _conv_args(where, kernel_size, stride, padding, dilation)
    padding = _norm_padding(padding, s)
    T, B = x.shape[-1], cu_seqlens.numel() - 1
    span = d * (K - 1) + 1
    host = None
    if not torch.compiler.is_compiling():
        host = check(where, cu_seqlens, T, K, s, d, padding)
    cu = cu_seqlens.to(torch.int64)
    lens = cu[1:] - cu[:-1]
    lo, hi, out = _per_sequence(lens, K, s, d, padding)
    seg = torch.div(lens + lo + hi + s - 1, s, rounding_mode="floor") * s
    start = torch.cumsum(seg, 0) - seg  # each sequence's first buffer frame (stride-aligned)
    if _length_preserving(K, s, d, padding):
        total, T_out = T + B * (lo + hi), T  # sizes from T and B alone (traceable)
    else:
        if host is None:
            host = cu_seqlens.detach().to("cpu", torch.int64)
        hl = host[1:] - host[:-1]
        hlo, hhi, hout = _per_sequence(hl, K, s, d, padding)
        total = int((torch.div(hl + hlo + hhi + s - 1, s, rounding_mode="floor") * s).sum())
        T_out = int(hout.sum())
    t = torch.arange(T, device=x.device)
    sid = torch.searchsorted(cu[1:], t, right=True)
    dest = t + (start + lo - cu[:-1])[sid]
    cu_out = torch.cat([cu.new_zeros(1), torch.cumsum(out, 0)])
    j = torch.arange(T_out, device=x.device)
    oid = torch.searchsorted(cu_out[1:], j, right=True)
    gather = j + (torch.div(start, s, rounding_mode="floor") - cu_out[:-1])[oid]
    return Plan(dest, max(total, span), gather, cu_out)


def _channel_last(t: Tensor) -> bool:
    return t.dim() == 3 and t.shape[1] > 1 and t.stride(1) == 1


def pack(x: Tensor, p: Plan) -> Tensor:
    """x (1, C, T) -> the zero-padded pack (1, C, p.length), in x's memory format (channel-last
    stays channel-last); differentiable (the gradient is an index_select)."""
    N, C = x.shape[:2]
    if _channel_last(x):
        buf = x.new_zeros((N, p.length, C))
        return buf.index_copy(1, p.dest, x.transpose(1, 2)).transpose(1, 2)
    return x.new_zeros((N, C, p.length)).index_copy(2, p.dest, x)


def unpack(y: Tensor, p: Plan) -> Tensor:
    """The op's output on the pack (1, M, G) -> each sequence's valid frames (1, M, T_out), in
    y's memory format; differentiable (unique indices: a deterministic backward)."""
    if _channel_last(y):
        return y.transpose(1, 2).index_select(1, p.gather).transpose(1, 2)
    return y.index_select(2, p.gather)
