"""Functional API: argument checks, padding resolution, 1D-as-2D views, dispatch to the ops.

The semantics are those of ``F.conv2d(x, w, b, stride, padding, dilation, groups=C)`` and
``F.conv1d``, unbatched inputs included; 1D adds ``padding='causal'`` (left pad d*(K-1),
output length = input length). Under ``torch.autocast`` the arguments are cast as autocast
casts a convolution's, before the checks (so fp32 weights with a bf16 input are fine there).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from triton_dsd import _checks, epilogue, ops, shapes, varlen
from triton_dsd.shapes import Padding
from triton_dsd.varlen import conv1d_out_cu_seqlens  # noqa: F401  (public: the output offsets)

IntOrTuple = Union[int, Sequence[int]]


def _deterministic(flag: Optional[bool]) -> bool:
    return bool(flag) or torch.are_deterministic_algorithms_enabled()


def _batched(x, dim: int):
    """(x with a batch axis, whether one was added): F.conv accepts unbatched inputs."""
    if isinstance(x, Tensor) and x.dim() == dim + 1:
        return x.unsqueeze(0), True
    return x, False


def _as_2d(t: Tensor, dim: int) -> Tensor:
    """1D tensors run as 2D ones with H = 1 ((N, C, L) -> (N, C, 1, L)): a view, no copy."""
    return t.unsqueeze(2) if dim == 1 else t


def _geometry(where: str, dim: int, x: Tensor, kernel, stride, padding, dilation):
    """(stride, pads, dilation) as the 2D ops take them, validated, output checked non-empty."""
    stride = shapes.positive_tuple(where, "stride", stride, dim)
    dilation = shapes.positive_tuple(where, "dilation", dilation, dim)
    pads = shapes.resolve_padding(padding, kernel, stride, dilation, where, x.shape[2:])
    shapes.check_out_sizes(where, x.shape[2:], kernel, stride, pads, dilation)
    if dim == 1:
        return (1,) + stride, (0, 0) + pads, (1,) + dilation
    return stride, pads, dilation


def _finish(y: Tensor, dim: int, unbatched: bool, plan: Optional[varlen.Plan] = None) -> Tensor:
    if dim == 1:
        y = y.squeeze(2)
    if plan is not None:  # packed sequences: each one's valid frames
        y = varlen.unpack(y, plan)
    return y.squeeze(0) if unbatched else y


def _refuse_packed_streaming(where: str, cu_seqlens, streaming: bool) -> None:
    if cu_seqlens is not None and streaming:
        raise NotImplementedError(
            f"{where}: `cu_seqlens` cannot be combined with `initial_state` / "
            f"`return_final_state`: a state is per sequence and packed streaming is not "
            f"supported; stream each sequence on its own (x[..., a:b] with its state), or "
            f"drop `cu_seqlens` and stream a (N, C, L) batch")


def _varlen(where: str, x: Tensor, cu_seqlens, K: int, stride, padding, dilation):
    """Packed sequences (``triton_dsd.varlen``): (the zero-padded pack, padding 0, the plan)."""
    plan = varlen.plan(where, x, cu_seqlens, K, stride, padding, dilation)
    return varlen.pack(x, plan), 0, plan


def _cat_frames(a: Tensor, b: Tensor) -> Tensor:
    """a then b along the last (time) axis, in b's memory format (channel-last 1D stays so)."""
    if b.dim() == 3 and b.shape[1] > 1 and b.stride(1) == 1:
        return torch.cat([a.transpose(1, 2), b.transpose(1, 2)], dim=1).transpose(1, 2)
    return torch.cat([a, b], dim=-1)


def _check_state(where: str, name: str, state, x: Tensor, width: int) -> None:
    """A conv state of x's streams: (N, C, width = dilation*(K-1)), x's dtype and device."""
    N, C = x.shape[:2]
    _checks.check_tensor(where, name, state, 3, f"(N, C, dilation*(K-1)) = ({N}, {C}, {width})")
    _checks.check_same(where, "x", x, name, state)
    if tuple(state.shape) != (N, C, width):
        raise ValueError(f"{where}: `{name}` must have shape (N, C, dilation*(K-1)) = ({N}, {C}, "
                         f"{width}): the last {width} input frames of each channel; got "
                         f"{tuple(state.shape)}")


def _stream(where: str, x: Tensor, K: int, dilation, padding, initial_state,
            return_final_state: bool):
    """Causal 1D streaming: (x preceded by the state, padding 0, the state after x or None).

    The state is the last d*(K-1) input frames per channel, (N, C, d*(K-1)) (zeros when
    ``initial_state`` is None): prepending it to a chunk and convolving without padding
    gives exactly the chunk's outputs of the whole sequence, and the new state is the last
    d*(K-1) frames of that extended chunk. (One copy of the chunk per call; the state's
    gradient flows through the concatenation.)"""
    if padding != "causal":
        raise ValueError(f"{where}: `initial_state` / `return_final_state` stream a causal "
                         f"convolution: they need padding='causal'; got padding={padding!r}")
    d = shapes.positive_tuple(where, "dilation", dilation, 1)[0]
    width = shapes.causal_pad(K, d)
    N, C = x.shape[:2]
    if initial_state is None:
        initial_state = x.new_zeros((N, C, width))
    else:
        _check_state(where, "initial_state", initial_state, x, width)
    xs = _cat_frames(initial_state, x)
    final = xs[..., xs.shape[-1] - width:].clone() if return_final_state else None
    return xs, 0, final


def _depthwise(where: str, dim: int, x, weight, bias, stride, padding, dilation,
               deterministic, initial_state=None, return_final_state=False, cu_seqlens=None):
    streaming = initial_state is not None or return_final_state
    x, weight, bias, initial_state = ops.autocast_args(x, weight, bias, initial_state)
    x, unbatched = _batched(x, dim)
    _checks.check_depthwise(where, x, weight, bias, dim)
    final = plan = None
    _refuse_packed_streaming(where, cu_seqlens, streaming)
    if cu_seqlens is not None:
        x, padding, plan = _varlen(where, x, cu_seqlens, weight.shape[-1], stride, padding,
                                   dilation)
    if streaming:
        state = initial_state.unsqueeze(0) if unbatched and initial_state is not None \
            and initial_state.dim() == 2 else initial_state
        x, padding, final = _stream(where, x, weight.shape[-1], dilation, padding, state,
                                    return_final_state)
    geo = _geometry(where, dim, x, tuple(weight.shape[2:]), stride, padding, dilation)
    y = ops.depthwise(_as_2d(x, dim), _as_2d(weight, dim), bias, *geo,
                      _deterministic(deterministic))
    y = _finish(y, dim, unbatched, plan)
    if return_final_state:
        return y, final.squeeze(0) if unbatched else final
    return y


def _pointwise(where: str, dim: int, x, weight, bias, deterministic) -> Tensor:
    x, weight, bias = ops.autocast_args(x, weight, bias)
    x, unbatched = _batched(x, dim)
    _checks.check_input(where, x, dim)
    _checks.check_pointwise(where, x.shape[1], weight, bias, dim, "x", x)
    y = ops.pointwise(_as_2d(x, dim), _as_2d(weight, dim), bias, _deterministic(deterministic))
    return _finish(y, dim, unbatched)


def _epilogue(where: str, x: Tensor, CM: int, M: int, mid_scale, mid_shift, mid_act,
              out_scale, out_shift, out_act, mid_norm=None, mid_eps=1e-5) -> epilogue.Epilogue:
    """The checked epilogue of a fused call: vectors in the accumulator dtype, contiguous (a
    scale without a shift gets zeros, a shift without a scale ones)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    parts = []
    for (scale, shift, n, what, prefix) in ((mid_scale, mid_shift, CM,
                                             "depthwise output channel (C*m)", "mid"),
                                            (out_scale, out_shift, M, "output channel (M)",
                                             "out")):
        _checks.check_channel_vector(where, f"{prefix}_scale", scale, n, x, what)
        _checks.check_channel_vector(where, f"{prefix}_shift", shift, n, x, what)
        if scale is None and shift is None:
            parts.append((None, None))
            continue
        scale = x.new_ones(n, dtype=acc) if scale is None else scale.to(acc).contiguous()
        shift = x.new_zeros(n, dtype=acc) if shift is None else shift.to(acc).contiguous()
        parts.append((scale, shift))
    norm = epilogue.norm_code(where, "mid_norm", mid_norm)
    if not isinstance(mid_eps, (int, float)) or isinstance(mid_eps, bool) or not mid_eps > 0:
        raise ValueError(f"{where}: `mid_eps` must be a positive number; got {mid_eps!r}")
    return epilogue.Epilogue(*parts[0], epilogue.act_code(where, "mid_act", mid_act),
                             *parts[1], epilogue.act_code(where, "out_act", out_act), norm,
                             float(mid_eps))


def _dsd(where: str, dim: int, x, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding,
         dilation, fused, deterministic, mid_scale=None, mid_shift=None, mid_act=None,
         out_scale=None, out_shift=None, out_act=None, mid_norm=None, mid_eps=1e-5,
         initial_state=None, return_final_state=False, cu_seqlens=None):
    if pw_weight is None:
        raise TypeError(f"{where}: `pw_weight` is required (the 1x1 weight (M, C*m"
                        f"{', 1' * dim})); the biases are optional")
    streaming = initial_state is not None or return_final_state
    x, dw_weight, dw_bias, pw_weight, pw_bias, initial_state = ops.autocast_args(
        x, dw_weight, dw_bias, pw_weight, pw_bias, initial_state)
    x, unbatched = _batched(x, dim)
    C, m = _checks.check_depthwise(where, x, dw_weight, dw_bias, dim, "dw_weight", "dw_bias")
    _refuse_packed_streaming(where, cu_seqlens, streaming)
    final = None
    if streaming:
        state = initial_state.unsqueeze(0) if unbatched and initial_state is not None \
            and initial_state.dim() == 2 else initial_state
        x, padding, final = _stream(where, x, dw_weight.shape[-1], dilation, padding, state,
                                    return_final_state)
    M = _checks.check_pointwise(where, C * m, pw_weight, pw_bias, dim, "x", x, "pw_weight",
                                "pw_bias")
    epi = _epilogue(where, x, C * m, M, mid_scale, mid_shift, mid_act, out_scale, out_shift,
                    out_act, mid_norm, mid_eps)
    plan = None
    if cu_seqlens is not None:
        x, padding, plan = _varlen(where, x, cu_seqlens, dw_weight.shape[-1], stride, padding,
                                   dilation)
    geo = _geometry(where, dim, x, tuple(dw_weight.shape[2:]), stride, padding, dilation)
    y = ops.dsd(_as_2d(x, dim), _as_2d(dw_weight, dim), dw_bias, _as_2d(pw_weight, dim),
                pw_bias, *geo, bool(fused), _deterministic(deterministic), epi)
    y = _finish(y, dim, unbatched, plan)
    if return_final_state:
        return y, final.squeeze(0) if unbatched else final
    return y


def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                     stride: IntOrTuple = 1, padding: Padding = 0, dilation: IntOrTuple = 1, *,
                     deterministic: Optional[bool] = None) -> Tensor:
    """Dilated depthwise 2D convolution: ``F.conv2d(x, weight, bias, stride, padding, dilation, groups=C)``.

    x: (N, C, H, W) or unbatched (C, H, W), NCHW or channels_last (the output keeps the
    format, as eager does). weight: (C*m, 1, kH, kW) for a depth multiplier m >= 1. bias:
    (C*m,) or None. padding: int, (ph, pw), 'same' (stride 1; the odd element at the
    bottom/right) or 'valid'. deterministic: atomic-free weight-gradient reduction (also on
    under ``torch.use_deterministic_algorithms(True)``).
    """
    return _depthwise("triton_dsd.depthwise_conv2d", 2, x, weight, bias, stride, padding,
                      dilation, deterministic)


def depthwise_conv1d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                     stride: IntOrTuple = 1, padding: Padding = 0, dilation: IntOrTuple = 1, *,
                     initial_state: Optional[Tensor] = None, return_final_state: bool = False,
                     deterministic: Optional[bool] = None, cu_seqlens: Optional[Tensor] = None):
    """Dilated depthwise 1D convolution: ``F.conv1d(x, weight, bias, stride, padding, dilation, groups=C)``.

    x: (N, C, L) or unbatched (C, L), contiguous or with channel-last strides (a transposed
    (N, L, C) tensor; the output keeps them). weight: (C*m, 1, K). padding: int, 'same',
    'valid' or 'causal'. Runs as the 2D kernels on (N, C, 1, L) views: no copy.

    Streaming (padding='causal'): ``initial_state`` (N, C, dilation*(K-1)), the last input
    frames before ``x`` (zeros when None), and ``return_final_state=True`` returns
    ``(y, final_state)``, the state after ``x``: a sequence fed in chunks of any size, the
    state carried, gives the whole sequence's output. The state gets gradients.

    Packed variable-length batches: ``cu_seqlens`` (int32/int64, B+1 offsets on x's device,
    0 = cu_seqlens[0] <= ... <= cu_seqlens[-1] = T) says that x (1, C, T) or (C, T) holds B
    sequences one after another, sequence i at frames [cu_seqlens[i], cu_seqlens[i+1]), as
    flash-attn packs them. Each is convolved on its own (no tap crosses a boundary; the
    padding, any of int, 'valid', 'same', 'causal', 'tf_same', applies at each sequence's
    own ends; any stride) and its output is frames [cu_out[i], cu_out[i+1]) of y, with
    ``cu_out = conv1d_out_cu_seqlens(cu_seqlens, K, stride, padding, dilation)`` (==
    cu_seqlens for stride 1 with 'same'/'causal'). Still one kernel launch: see
    ``triton_dsd.varlen`` for how, and its cost (a padded copy of x, a gather of y). Not
    with streaming (``initial_state`` / ``return_final_state``).
    """
    return _depthwise("triton_dsd.depthwise_conv1d", 1, x, weight, bias, stride, padding,
                      dilation, deterministic, initial_state, return_final_state, cu_seqlens)


def pointwise_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *,
                     deterministic: Optional[bool] = None) -> Tensor:
    """1x1 convolution ``F.conv2d(x, weight, bias)`` with weight (M, C, 1, 1): a Triton GEMM.

    NCHW and channels_last without layout copies (the output keeps the format). fp16/bf16 run
    on the tensor cores with fp32 accumulation; fp32 uses TF32 exactly when eager convolutions
    do (``torch.backends.cudnn.allow_tf32``).
    """
    return _pointwise("triton_dsd.pointwise_conv2d", 2, x, weight, bias, deterministic)


def pointwise_conv1d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *,
                     deterministic: Optional[bool] = None) -> Tensor:
    """1x1 convolution ``F.conv1d(x, weight, bias)`` with weight (M, C, 1): a Triton GEMM."""
    return _pointwise("triton_dsd.pointwise_conv1d", 1, x, weight, bias, deterministic)


def dsd_conv2d(x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor] = None,
               pw_weight: Optional[Tensor] = None, pw_bias: Optional[Tensor] = None,
               stride: IntOrTuple = 1, padding: Padding = 0, dilation: IntOrTuple = 1,
               fused: bool = True, *, mid_scale: Optional[Tensor] = None,
               mid_shift: Optional[Tensor] = None, mid_act: Optional[str] = None,
               out_scale: Optional[Tensor] = None, out_shift: Optional[Tensor] = None,
               out_act: Optional[str] = None, mid_norm: Optional[str] = None,
               mid_eps: float = 1e-5, deterministic: Optional[bool] = None) -> Tensor:
    """The depthwise-separable dilated conv: ``F.conv2d(F.conv2d(x, dw_weight, dw_bias, stride,
    padding, dilation, groups=C), pw_weight, pw_bias)``.

    dw_weight (C*m, 1, kH, kW), pw_weight (M, C*m, 1, 1) (required, by position or keyword),
    biases (C*m,) / (M,) or None: ``dsd_conv2d(x, dw, pw_weight=pw)`` has no biases.
    fused=True: the forward is ONE kernel (the depthwise output stays on chip) and the
    backward keeps only x, recomputing the depthwise output. fused=False: two kernels, and the
    backward keeps x and the depthwise output, as eager does.

    Epilogues (``triton_dsd.epilogue``; inside the fused kernel, eager between the two kernels
    when fused=False): between the stages ``z -> mid_act(z * mid_scale + mid_shift)`` per
    depthwise channel, and after the pointwise ``y -> out_act(y * out_scale + out_shift)`` per
    output channel. An eval-mode batch norm is ``epilogue.fold_batch_norm(bn, dtype)``;
    activations: identity (None), relu, relu6, silu, gelu, gelu_tanh, hardswish. Scales and
    shifts are used in float32 (float64 for float64 inputs) and get gradients.
    ``mid_norm='layer_norm'`` normalises z over its C*m channels at each pixel first (eps
    ``mid_eps``; ConvNeXt's LayerNorm, whose weight and bias are then mid_scale/mid_shift):
    in the fused kernel while one program holds every channel
    (``launchers.dsd_mid_norm_fits``), else unfused.
    """
    return _dsd("triton_dsd.dsd_conv2d", 2, x, dw_weight, dw_bias, pw_weight, pw_bias, stride,
                padding, dilation, fused, deterministic, mid_scale, mid_shift, mid_act,
                out_scale, out_shift, out_act, mid_norm, mid_eps)


def dsd_conv1d(x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor] = None,
               pw_weight: Optional[Tensor] = None, pw_bias: Optional[Tensor] = None,
               stride: IntOrTuple = 1, padding: Padding = 0, dilation: IntOrTuple = 1,
               fused: bool = True, *, mid_scale: Optional[Tensor] = None,
               mid_shift: Optional[Tensor] = None, mid_act: Optional[str] = None,
               out_scale: Optional[Tensor] = None, out_shift: Optional[Tensor] = None,
               out_act: Optional[str] = None, mid_norm: Optional[str] = None,
               mid_eps: float = 1e-5, initial_state: Optional[Tensor] = None,
               return_final_state: bool = False, deterministic: Optional[bool] = None,
               cu_seqlens: Optional[Tensor] = None):
    """1D depthwise-separable dilated conv (padding may be 'causal'); weights (C*m, 1, K),
    (M, C*m, 1); the epilogues as in :func:`dsd_conv2d`. Runs as the 2D kernels on
    (N, C, 1, L) views. Streaming with ``initial_state`` / ``return_final_state`` (causal
    padding) as in :func:`depthwise_conv1d`: the state is the depthwise input's last
    dilation*(K-1) frames, (N, C, dilation*(K-1)), and the result ``(y, final_state)``.

    Packed variable-length batches with ``cu_seqlens`` (B+1 offsets into x (1, C, T) or
    (C, T)) as in :func:`depthwise_conv1d`: every sequence is convolved on its own, with
    the padding at its own ends; sequence i's output is frames [cu_out[i], cu_out[i+1]) of
    y, ``cu_out = conv1d_out_cu_seqlens(cu_seqlens, K, stride, padding, dilation)``. The
    epilogues, ``fused`` and every gradient work as without it; still one fused launch."""
    return _dsd("triton_dsd.dsd_conv1d", 1, x, dw_weight, dw_bias, pw_weight, pw_bias, stride,
                padding, dilation, fused, deterministic, mid_scale, mid_shift, mid_act,
                out_scale, out_shift, out_act, mid_norm, mid_eps, initial_state,
                return_final_state, cu_seqlens)


def _overlaps(t: Tensor) -> bool:
    """True if two elements of t share memory (an expanded or overlapping view): by the
    strides, sorted, each at least the extent of the smaller ones."""
    extent = 0
    dims = sorted(((abs(st), n) for n, st in zip(t.shape, t.stride()) if n > 1))
    for stride, size in dims:
        if stride <= extent:
            return True
        extent += stride * (size - 1)
    return False


def dsd_conv1d_step(x: Tensor, state: Tensor, dw_weight: Tensor,
                    dw_bias: Optional[Tensor] = None, pw_weight: Optional[Tensor] = None,
                    pw_bias: Optional[Tensor] = None, dilation: int = 1, *,
                    mid_scale: Optional[Tensor] = None, mid_shift: Optional[Tensor] = None,
                    mid_act: Optional[str] = None, out_scale: Optional[Tensor] = None,
                    out_shift: Optional[Tensor] = None, out_act: Optional[str] = None,
                    deterministic: Optional[bool] = None) -> Tensor:
    """One frame of the causal :func:`dsd_conv1d` for a batch of N streams (decoding).

    x: this frame, (N, C) or (N, C, 1). state: (N, C, dilation*(K-1)), the last input frames
    of each stream, oldest first (the ``final_state`` of a chunked call, or zeros at the
    start), same dtype and device as x; it moves one frame IN PLACE (x is appended, the
    oldest frame dropped). Returns y: (N, M), or (N, M, 1) for a (N, C, 1) x, equal to the
    causal layer's output at this frame. One kernel launch on the GPU: the tap sum from the
    state, the epilogues of :func:`dsd_conv2d` (no ``mid_norm``) and the pointwise GEMV.

    Inference only: nothing is recorded for autograd, so y carries no gradient to the weights
    either (train with the chunked forward and ``initial_state``); an x or state that
    requires grad is refused while grad mode is on. deterministic: the channel blocks' partial sums are added in a fixed
    order instead of atomically (bitwise reproducible, a little slower).
    """
    where = "triton_dsd.dsd_conv1d_step"
    if pw_weight is None:
        raise TypeError(f"{where}: `pw_weight` is required (the 1x1 weight (M, C*m, 1))")
    if not isinstance(x, Tensor) or x.dim() not in (2, 3) or (x.dim() == 3 and x.shape[2] != 1):
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{where}: `x` must be one frame of N streams, (N, C) or (N, C, 1); "
                         f"got {got}")
    framed = x.dim() == 3
    x, dw_weight, dw_bias, pw_weight, pw_bias = ops.autocast_args(
        x, dw_weight, dw_bias, pw_weight, pw_bias)
    x3 = x if framed else x.unsqueeze(-1)
    C, m = _checks.check_depthwise(where, x3, dw_weight, dw_bias, 1, "dw_weight", "dw_bias")
    M = _checks.check_pointwise(where, C * m, pw_weight, pw_bias, 1, "x", x3, "pw_weight",
                                "pw_bias")
    d = shapes.positive_tuple(where, "dilation", dilation, 1)[0]
    width = shapes.causal_pad(dw_weight.shape[-1], d)
    if isinstance(state, Tensor) and state.dtype != x.dtype \
            and torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"{where}: `state` has dtype {state.dtype} but `x` is {x.dtype} under "
                        f"autocast (autocast casts the frame, never the state, which is updated "
                        f"in place): keep the state in {x.dtype}")
    _check_state(where, "state", state, x, width)
    if _overlaps(state):
        raise ValueError(f"{where}: `state` is updated in place and must not be an expanded "
                         f"or overlapping view (its elements share memory); pass "
                         f"state.clone()")
    if torch.is_grad_enabled() and (x.requires_grad or state.requires_grad):
        raise RuntimeError(f"{where}: the decode step records no autograd graph, and "
                           f"`{'x' if x.requires_grad else 'state'}` requires grad: run it "
                           f"under torch.no_grad() / torch.inference_mode(), or train with the "
                           f"chunked forward (`initial_state` / `return_final_state`)")
    epi = _epilogue(where, x3, C * m, M, mid_scale, mid_shift, mid_act, out_scale, out_shift,
                    out_act)
    xs = x3.squeeze(-1)
    y = ops.step(xs, state, _as_2d(dw_weight, 1), dw_bias, _as_2d(pw_weight, 1), pw_bias, d,
                 _deterministic(deterministic), epi)
    return y.unsqueeze(-1) if framed else y
