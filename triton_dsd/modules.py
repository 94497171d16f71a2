"""nn.Modules: they hold parameters and call the functional API (they never launch kernels).

``DepthwiseConv2d`` / ``DepthwiseConv1d`` are drop-ins for ``nn.Conv2d(C, C*m, k, groups=C, ...)``
/ ``nn.Conv1d`` and ``PointwiseConv2d`` / ``PointwiseConv1d`` for ``nn.Conv2d(C, M, 1)``: they
subclass them with the very same positional parameters, so constructor defaults, parameter
names, shapes, init, ``extra_repr``, state_dicts and unbatched inputs are nn.Conv's own; only
the forward computation differs.

The separable layers keep the source article's positional order, ``(in_channels,
out_channels, kernel_size, dilation, padding)``: code written for the article's class works
unchanged. Everything else is keyword-only. Their forward is one fused kernel when both
children are our own plain convs; when a child carries hooks, is wrapped or replaced (LoRA,
quantisation, parametrizations), the layer calls through its children instead, so what was
placed there runs.
"""
from __future__ import annotations

import weakref
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module_hooks

from triton_dsd import _checks, epilogue, functional as Fd, shapes


def _check_depthwise_channels(cls: str, in_channels, out_channels, groups) -> None:
    for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
        if not shapes.is_int(v) or v < 1:
            raise ValueError(f"{cls}: `{name}` must be a positive int; got {v!r}")
    if out_channels % in_channels != 0:
        raise ValueError(f"{cls}: `out_channels` ({out_channels}) must be a multiple of "
                         f"`in_channels` ({in_channels}): out = in * depth_multiplier")
    if groups is not None and groups != in_channels:
        raise ValueError(f"{cls}: a depthwise conv has groups == in_channels ({in_channels}); "
                         f"got `groups`={groups!r}")


def _padded(conv: nn.Module, x: Tensor):
    """(input, padding) as nn.Conv computes them: a non-'zeros' padding_mode pads first."""
    if conv.padding_mode != "zeros":
        return nn.functional.pad(x, conv._reversed_padding_repeated_twice,
                                 mode=conv.padding_mode), 0
    return x, conv.padding


def _set_tf_same(conv: nn.Module) -> None:
    """padding='tf_same' (TensorFlow "SAME", timm's Conv2dSame): computed from each input's
    size by the functional API; zero padding only."""
    if conv.padding_mode != "zeros":
        raise ValueError(f"{type(conv).__name__}: `padding`='tf_same' pads with zeros; got "
                         f"`padding_mode`={conv.padding_mode!r}")
    conv.padding = "tf_same"


class DepthwiseConv2d(nn.Conv2d):
    """Dilated depthwise 2D conv on the Triton kernels; a positional drop-in for
    ``nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype)``
    with ``groups`` = in_channels (the default here; any other value is an error).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: Optional[int] = None, bias: bool = True,
                 padding_mode: str = "zeros", device=None, dtype=None) -> None:
        _check_depthwise_channels(type(self).__name__, in_channels, out_channels, groups)
        tf_same = padding == "tf_same"
        super().__init__(in_channels, out_channels, kernel_size, stride, 0 if tf_same else padding,
                         dilation, in_channels, bias, padding_mode, device=device, dtype=dtype)
        if tf_same:
            _set_tf_same(self)

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        _checks.check_layer_input(type(self).__name__, input, self.in_channels, 2)
        input, padding = _padded(self, input)
        return Fd.depthwise_conv2d(input, weight, bias, self.stride, padding, self.dilation)


class DepthwiseConv1d(nn.Conv1d):
    """Dilated depthwise 1D conv on the Triton kernels; a positional drop-in for
    ``nn.Conv1d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype)``
    with ``groups`` = in_channels.

    ``padding='causal'`` is accepted too (left pad dilation*(kernel_size-1), output length =
    input length), which nn.Conv1d does not have, and (both classes) ``padding='tf_same'``,
    TensorFlow's "SAME" (timm's ``Conv2dSame``): any stride, padding from the input size.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: Optional[int] = None, bias: bool = True,
                 padding_mode: str = "zeros", device=None, dtype=None) -> None:
        _check_depthwise_channels(type(self).__name__, in_channels, out_channels, groups)
        causal = padding == "causal"
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         0 if padding in ("causal", "tf_same") else padding, dilation,
                         in_channels, bias, padding_mode, device=device, dtype=dtype)
        if padding == "tf_same":
            _set_tf_same(self)
        if causal:
            if self.stride[0] != 1:
                raise ValueError(f"{type(self).__name__}: `padding`='causal' needs stride 1; "
                                 f"got stride {stride!r}")
            self.padding = "causal"
            self._reversed_padding_repeated_twice = [
                shapes.causal_pad(self.kernel_size[0], self.dilation[0]), 0]

    def forward(self, input: Tensor, cu_seqlens: Optional[Tensor] = None) -> Tensor:
        """nn.Conv1d's forward; ``cu_seqlens`` (B+1 offsets) convolves a packed
        variable-length batch (1, C, T) / (C, T) sequence by sequence, the padding at each
        sequence's own ends (``functional.depthwise_conv1d``; output offsets
        ``conv1d_out_cu_seqlens``). Zero padding only."""
        if cu_seqlens is None:
            return super().forward(input)
        name = type(self).__name__
        if self.padding_mode != "zeros":
            raise ValueError(f"{name}: `cu_seqlens` pads each sequence with zeros; "
                             f"`padding_mode`={self.padding_mode!r} is not supported with it")
        _checks.check_layer_input(name, input, self.in_channels, 1)
        return Fd.depthwise_conv1d(input, self.weight, self.bias, self.stride, self.padding,
                                   self.dilation, cu_seqlens=cu_seqlens)

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        _checks.check_layer_input(type(self).__name__, input, self.in_channels, 1)
        input, padding = _padded(self, input)
        return Fd.depthwise_conv1d(input, weight, bias, self.stride, padding, self.dilation)


def _check_pointwise_args(cls: str, kernel_size, stride, padding, dilation, groups) -> None:
    """A pointwise conv is 1x1, stride 1, unpadded, ungrouped: anything else is an error."""
    for name, v, ok in (("kernel_size", kernel_size, 1), ("stride", stride, 1),
                        ("dilation", dilation, 1), ("groups", groups, 1)):
        vals = v if isinstance(v, (tuple, list)) else (v,)
        if any(e != ok for e in vals):
            raise ValueError(f"{cls}: a pointwise conv has `{name}`={ok}; got {v!r}")
    vals = padding if isinstance(padding, (tuple, list)) else (padding,)
    if not (padding in ("valid", "same") or all(e == 0 for e in vals)):
        raise ValueError(f"{cls}: a pointwise conv has no `padding`; got {padding!r}")


class _Pointwise:
    """The body both pointwise drop-ins share (mixed in before nn.Conv2d / nn.Conv1d)."""

    _n_spatial = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size=1, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None) -> None:
        _check_pointwise_args(type(self).__name__, kernel_size, stride, padding, dilation, groups)
        super().__init__(in_channels, out_channels, 1, bias=bias, padding_mode=padding_mode,
                         device=device, dtype=dtype)

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        _checks.check_layer_input(type(self).__name__, input, self.in_channels, self._n_spatial)
        fn = Fd.pointwise_conv2d if self._n_spatial == 2 else Fd.pointwise_conv1d
        return fn(input, weight, bias)


class PointwiseConv2d(_Pointwise, nn.Conv2d):
    """1x1 conv on the Triton GEMM; a positional drop-in for
    ``nn.Conv2d(in_channels, out_channels, 1, 1, 0, 1, 1, bias, 'zeros', device, dtype)``."""

    _n_spatial = 2


class PointwiseConv1d(_Pointwise, nn.Conv1d):
    """1x1 conv on the Triton GEMM; a positional drop-in for ``nn.Conv1d(in_channels, out_channels, 1)``."""

    _n_spatial = 1


_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _global_hooks() -> bool:
    return bool(_module_hooks._global_forward_hooks or _module_hooks._global_forward_pre_hooks
                or _module_hooks._global_backward_hooks
                or _module_hooks._global_backward_pre_hooks)


def plain_module(m: nn.Module, cls: type) -> bool:
    """True if ``m`` is exactly ``cls`` and nothing would run around its forward: no forward,
    pre-forward or backward hooks on it (or registered globally). Only then may a fused
    kernel read its parameters instead of calling it."""
    return (type(m) is cls and not m._forward_hooks and not m._forward_pre_hooks
            and not m._backward_hooks and not getattr(m, "_backward_pre_hooks", None)
            and not _global_hooks())


def _check_separable(cls: str, n_spatial: int, in_channels, out_channels, kernel_size, dilation,
                     padding, stride, depth_multiplier, padding_mode) -> None:
    """Constructor checks of the separable layers (ValueError naming the argument)."""
    for name, v in (("in_channels", in_channels), ("out_channels", out_channels),
                    ("depth_multiplier", depth_multiplier)):
        if not shapes.is_int(v) or v < 1:
            raise ValueError(f"{cls}: `{name}` must be a positive int; got {v!r}")
    shapes.positive_tuple(cls, "kernel_size", kernel_size, n_spatial)
    strides = shapes.positive_tuple(cls, "stride", stride, n_spatial)
    shapes.positive_tuple(cls, "dilation", dilation, n_spatial)
    if padding_mode not in _PADDING_MODES:
        raise ValueError(f"{cls}: `padding_mode` must be one of {_PADDING_MODES}; got "
                         f"{padding_mode!r}")
    shapes.check_padding_spec(cls, padding, n_spatial, strides)


class _Separable(nn.Module):
    """Shared body of the Triton separable layers: .depthwise then .pointwise."""

    _n_spatial = 2

    def __init__(self, in_channels, out_channels, kernel_size, dilation, padding, stride, bias,
                 depth_multiplier, padding_mode, fused, device, dtype) -> None:
        super().__init__()
        name = type(self).__name__
        _check_separable(name, self._n_spatial, in_channels, out_channels, kernel_size, dilation,
                         padding, stride, depth_multiplier, padding_mode)
        dw_cls, pw_cls = self._classes()
        cm = in_channels * depth_multiplier
        self.depthwise = dw_cls(in_channels, cm, kernel_size, stride, padding, dilation,
                                bias=bias, padding_mode=padding_mode, device=device, dtype=dtype)
        self.pointwise = pw_cls(cm, out_channels, bias=bias, device=device, dtype=dtype)
        self.fused = bool(fused)
        # the configuration, as nn.Conv keeps its own (valid even when a child is wrapped)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.depth_multiplier = depth_multiplier

    @classmethod
    def _classes(cls):
        return ((DepthwiseConv2d, PointwiseConv2d) if cls._n_spatial == 2
                else (DepthwiseConv1d, PointwiseConv1d))

    def fuses(self) -> bool:
        """True if the forward runs as one fused kernel: ``fused`` is set and both children
        are our own plain convs (no hooks, wrappers or replacements)."""
        dw_cls, pw_cls = self._classes()
        return (self.fused and plain_module(self.depthwise, dw_cls)
                and plain_module(self.pointwise, pw_cls))

    def forward(self, x: Tensor, initial_state: Optional[Tensor] = None,
                return_final_state: bool = False, cu_seqlens: Optional[Tensor] = None):
        """The layer; for a causal 1D layer, streaming too: ``initial_state`` (N, C,
        dilation*(K-1)), the last input frames before ``x`` (zeros when None), and
        ``return_final_state=True`` returns ``(y, final_state)`` (``functional.dsd_conv1d``).

        1D: ``cu_seqlens`` (int32/int64 B+1 offsets) runs a packed variable-length batch x
        (1, C, T) or (C, T), each sequence on its own with the padding at its own ends
        (``functional.dsd_conv1d``); sequence i's output is frames [cu_out[i], cu_out[i+1])
        with ``cu_out = triton_dsd.conv1d_out_cu_seqlens(cu_seqlens, K, stride, padding,
        dilation)`` (== cu_seqlens for stride 1 with 'same'/'causal')."""
        if cu_seqlens is not None:
            return self._packed(x, cu_seqlens, initial_state is not None or return_final_state)
        if initial_state is not None or return_final_state:
            return self._stream(x, initial_state, return_final_state)
        if not self.fuses():  # through the children: their hooks and wrappers run
            return self.pointwise(self.depthwise(x))
        dw, pw = self.depthwise, self.pointwise
        _checks.check_layer_input(type(self).__name__, x, dw.in_channels, self._n_spatial)
        x, padding = _padded(dw, x)
        fn = Fd.dsd_conv2d if self._n_spatial == 2 else Fd.dsd_conv1d
        return fn(x, dw.weight, dw.bias, pw.weight, pw.bias, dw.stride, padding, dw.dilation,
                  fused=True)

    def _packed(self, x, cu_seqlens, streaming: bool):
        name = type(self).__name__
        dw, pw = self.depthwise, self.pointwise
        if self._n_spatial != 1:
            raise ValueError(f"{name}: `cu_seqlens` packs 1D sequences; this is a 2D layer")
        if streaming:
            raise NotImplementedError(f"{name}: `cu_seqlens` cannot be combined with "
                                      f"`initial_state` / `return_final_state`; stream each "
                                      f"sequence on its own, or drop `cu_seqlens`")
        if not isinstance(dw, DepthwiseConv1d):
            raise NotImplementedError(f"{name}: `cu_seqlens` needs the depthwise child to be a "
                                      f"DepthwiseConv1d; it is {type(dw).__name__}")
        if dw.padding_mode != "zeros":
            raise ValueError(f"{name}: `cu_seqlens` pads each sequence with zeros; "
                             f"`padding_mode`={dw.padding_mode!r} is not supported with it")
        if not self.fuses():  # through the children (the pointwise stage is per frame)
            return pw(dw(x, cu_seqlens=cu_seqlens))
        _checks.check_layer_input(name, x, dw.in_channels, 1)
        return Fd.dsd_conv1d(x, dw.weight, dw.bias, pw.weight, pw.bias, dw.stride, dw.padding,
                             dw.dilation, fused=True, cu_seqlens=cu_seqlens)

    def _stream(self, x, initial_state, return_final_state):
        name = type(self).__name__
        dw, pw = self.depthwise, self.pointwise
        if self._n_spatial != 1 or getattr(dw, "padding", None) != "causal":
            raise ValueError(f"{name}: `initial_state` / `return_final_state` stream a causal "
                             f"1D layer; this one has padding="
                             f"{getattr(dw, 'padding', None)!r}")
        if dw.padding_mode != "zeros":
            raise ValueError(f"{name}: streaming carries the previous frames in place of the "
                             f"padding; `padding_mode`={dw.padding_mode!r} has no streaming "
                             f"meaning (use 'zeros')")
        dw_cls, pw_cls = self._classes()
        if not plain_module(dw, dw_cls):
            raise NotImplementedError(f"{name}: streaming through a depthwise child with hooks "
                                      f"or a wrapper is not supported")
        _checks.check_layer_input(name, x, dw.in_channels, 1)
        if self.fused and plain_module(pw, pw_cls):
            return Fd.dsd_conv1d(x, dw.weight, dw.bias, pw.weight, pw.bias, dw.stride,
                                 "causal", dw.dilation, fused=True, initial_state=initial_state,
                                 return_final_state=return_final_state)
        out = Fd.depthwise_conv1d(x, dw.weight, dw.bias, dw.stride, "causal", dw.dilation,
                                  initial_state=initial_state,
                                  return_final_state=return_final_state)
        if return_final_state:
            return self.pointwise(out[0]), out[1]
        return self.pointwise(out)

    def _decoder(self, what: str):
        """The depthwise child of a causal 1D layer that can decode frame by frame."""
        name = type(self).__name__
        dw, pw = self.depthwise, self.pointwise
        if self._n_spatial != 1 or getattr(dw, "padding", None) != "causal" \
                or tuple(getattr(dw, "stride", (1,))) != (1,):
            raise ValueError(f"{name}: `{what}` decodes a causal 1D layer (padding='causal', "
                             f"stride 1) frame by frame; this one has padding="
                             f"{getattr(dw, 'padding', None)!r}, stride="
                             f"{getattr(dw, 'stride', None)!r}")
        dw_cls, pw_cls = self._classes()
        if dw.padding_mode != "zeros" or not plain_module(dw, dw_cls) \
                or not plain_module(pw, pw_cls):
            raise NotImplementedError(f"{name}: `{what}` needs plain depthwise and pointwise "
                                      f"children (no hooks, wrappers, or padding_mode other "
                                      f"than 'zeros')")
        return dw

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> Tensor:
        """A zero conv state for :meth:`step` (and ``initial_state``): (batch_size, C,
        dilation*(K-1)), on the weights' device and dtype unless given (under autocast, the
        autocast dtype: the frames' dtype there)."""
        dw = self._decoder("init_state")
        if not shapes.is_int(batch_size) or batch_size < 0:
            raise ValueError(f"{type(self).__name__}: `batch_size` must be a non-negative int; "
                             f"got {batch_size!r}")
        w = dw.weight
        dev = torch.device(device) if device is not None else w.device
        if dtype is None:
            dtype = w.dtype
            if dev.type in ("cuda", "cpu") and torch.is_autocast_enabled(dev.type) \
                    and dtype.is_floating_point and dtype != torch.float64:
                dtype = torch.get_autocast_dtype(dev.type)  # the dtype step's frames get
        return torch.zeros(batch_size, self.in_channels,
                           shapes.causal_pad(dw.kernel_size[0], dw.dilation[0]), device=dev,
                           dtype=dtype)

    def step(self, x: Tensor, state: Tensor) -> Tensor:
        """Decode one frame of N streams: x (N, C) or (N, C, 1) -> y (N, M) or (N, M, 1),
        the causal layer's output at that frame; ``state`` (N, C, dilation*(K-1)) (from
        :meth:`init_state`, or the ``final_state`` of a chunked forward) moves one frame in
        place. One kernel launch on the GPU (``functional.dsd_conv1d_step``); inference only.
        """
        dw, pw = self._decoder("step"), self.pointwise
        return Fd.dsd_conv1d_step(x, state, dw.weight, dw.bias, pw.weight, pw.bias,
                                  dw.dilation)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}"
        dw = self.depthwise
        if isinstance(dw, (nn.Conv1d, nn.Conv2d)):
            s += (f", kernel_size={dw.kernel_size}, dilation={dw.dilation}, "
                  f"padding={dw.padding}, stride={dw.stride}")
            if dw.bias is None:
                s += ", bias=False"
            if dw.padding_mode != "zeros":
                s += f", padding_mode={dw.padding_mode}"
        if self.depth_multiplier != 1:
            s += f", depth_multiplier={self.depth_multiplier}"
        return s + f", fused={self.fused}"


class DepthwiseSeparableDilatedConv2d(_Separable):
    """Depthwise-separable dilated 2D conv on the Triton kernels (fused forward by default).

    Positional parameters are the source article's: ``(in_channels, out_channels,
    kernel_size, dilation, padding)``. Note the 4th is the dilation, not the stride as in
    nn.Conv2d; everything after ``padding`` is keyword-only. ``.depthwise`` / ``.pointwise``
    hold the two convolutions' parameters (state_dict keys ``depthwise.weight, depthwise.bias,
    pointwise.weight, pointwise.bias``), initialised as nn.Conv2d initialises them.
    """

    _n_spatial = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size, dilation=1, padding=0, *,
                 stride=1, bias: bool = True, depth_multiplier: int = 1,
                 padding_mode: str = "zeros", fused: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, dilation, padding, stride, bias,
                         depth_multiplier, padding_mode, fused, device, dtype)


class DepthwiseSeparableDilatedConv1d(_Separable):
    """Depthwise-separable dilated 1D conv (TCN / WaveNet / separable-conv speech and NLP
    models) on the Triton kernels; ``padding='causal'`` pads dilation*(kernel_size-1) on the
    left. Positional order as the 2D layer: ``(in_channels, out_channels, kernel_size,
    dilation, padding)``."""

    _n_spatial = 1

    def __init__(self, in_channels: int, out_channels: int, kernel_size, dilation=1, padding=0, *,
                 stride=1, bias: bool = True, depth_multiplier: int = 1,
                 padding_mode: str = "zeros", fused: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, dilation, padding, stride, bias,
                         depth_multiplier, padding_mode, fused, device, dtype)


class _EagerSeparable(nn.Module):
    """The eager baseline: two plain nn.Conv layers (the source article's class, generalised)."""

    _n_spatial = 2

    def __init__(self, in_channels, out_channels, kernel_size, dilation, padding, stride, bias,
                 depth_multiplier, padding_mode, device, dtype) -> None:
        super().__init__()
        _check_separable(type(self).__name__, self._n_spatial, in_channels, out_channels,
                         kernel_size, dilation, padding, stride, depth_multiplier, padding_mode)
        conv = nn.Conv2d if self._n_spatial == 2 else nn.Conv1d
        cm = in_channels * depth_multiplier
        self.causal = padding == "causal"
        self.depthwise = conv(in_channels, cm, kernel_size, stride=stride,
                              padding=0 if self.causal else padding, dilation=dilation,
                              groups=in_channels, bias=bias, padding_mode=padding_mode,
                              device=device, dtype=dtype)
        self.pointwise = conv(cm, out_channels, 1, bias=bias, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        if self.causal:
            dw = self.depthwise
            mode = "constant" if dw.padding_mode == "zeros" else dw.padding_mode
            x = nn.functional.pad(x, (shapes.causal_pad(dw.kernel_size[0], dw.dilation[0]), 0),
                                  mode=mode)
        return self.pointwise(self.depthwise(x))


class EagerDepthwiseSeparableDilatedConv2d(_EagerSeparable):
    """Eager PyTorch baseline with the constructor of :class:`DepthwiseSeparableDilatedConv2d`
    (less ``fused``, which has no meaning here)."""

    _n_spatial = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size, dilation=1, padding=0, *,
                 stride=1, bias: bool = True, depth_multiplier: int = 1,
                 padding_mode: str = "zeros", device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, dilation, padding, stride, bias,
                         depth_multiplier, padding_mode, device, dtype)


class EagerDepthwiseSeparableDilatedConv1d(_EagerSeparable):
    """Eager PyTorch baseline with the constructor of :class:`DepthwiseSeparableDilatedConv1d`
    (less ``fused``)."""

    _n_spatial = 1

    def __init__(self, in_channels: int, out_channels: int, kernel_size, dilation=1, padding=0, *,
                 stride=1, bias: bool = True, depth_multiplier: int = 1,
                 padding_mode: str = "zeros", device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, dilation, padding, stride, bias,
                         depth_multiplier, padding_mode, device, dtype)


# --------------------------------------------------------------------------- fused chains
def _new_standing(cls):
    return cls.__new__(cls)


class _Standing(nn.Module):
    """A module standing at another module's path (``original``): it holds the original's
    parameter, buffer and child dictionaries themselves (so the state_dict keys, ``.to()``,
    ``.half()`` and loading reach them), reads and writes the original's other attributes
    (``bn.momentum = 0.01``, ``conv.kernel_size``), and loads and saves its state as the
    original does (batch norm's handling of old checkpoints included), and answers
    ``isinstance`` as the original (``type()`` is its own). Only ``training``, hooks and the
    slot's own bookkeeping (``_``-prefixed, ``head``) stay on the slot."""

    _OWN = ("training", "head", "padding", "permuted", "links", "conv")

    @property
    def __class__(self):
        # isinstance(slot, nn.BatchNorm2d) stays true for the module it stands for, so
        # type-based passes (freezing batch norms, init loops) still find it; type() is ours
        original = self.__dict__.get("original")
        return type(self) if original is None else type(original)

    def __reduce_ex__(self, protocol):  # pickle / deepcopy by the real class, not __class__
        return _new_standing, (type(self),), self.__getstate__()

    def _stand_for(self, original: nn.Module) -> None:
        self._parameters = original._parameters
        self._buffers = original._buffers
        self._non_persistent_buffers_set = original._non_persistent_buffers_set
        self._modules = original._modules
        self._version = getattr(original, "_version", 1)
        self.train(original.training)
        object.__setattr__(self, "original", original)  # not a child: its keys are ours

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            original = self.__dict__.get("original")
            if original is None:
                raise
            return getattr(original, name)

    def __setattr__(self, name, value):
        original = self.__dict__.get("original")
        if original is not None and not name.startswith("_") and name not in self._OWN and \
                name in vars(original):  # the original's own attributes: momentum, eps, ...
            setattr(original, name, value)
        else:
            super().__setattr__(name, value)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_from_head", None)  # a weak reference: not pickled, not copied
        return state

    def synced(self) -> nn.Module:
        """The original module, in this slot's train/eval mode (``model.train()`` reaches the
        slot, not the unregistered original)."""
        orig = self.original
        if orig.training != self.training:
            orig.train(self.training)
        return orig

    def _load_from_state_dict(self, *args, **kwargs):
        self.original._load_from_state_dict(*args, **kwargs)

    def _save_to_state_dict(self, *args, **kwargs):
        self.original._save_to_state_dict(*args, **kwargs)

    def _check_standing(self, where: str) -> None:
        """RuntimeError if this slot no longer stands for its original as convert left it:
        hooks registered on it since (they would see a pass-through), or state dictionaries
        no longer shared (nn.DataParallel replicas, pruning)."""
        if self._forward_hooks or self._forward_pre_hooks or self._backward_hooks or \
                getattr(self, "_backward_pre_hooks", None):
            raise RuntimeError(
                f"triton_dsd: {where} was fused into a SeparableChain by triton_dsd.convert "
                f"and has hooks registered since; they would see a pass-through, not its "
                f"output. Register hooks before convert (the chain is then not fused), or "
                f"run triton_dsd.to_eager(model) first")
        orig = self.original
        parametrized = torch.nn.utils.parametrize.is_parametrized
        if self._parameters is not orig._parameters or self._buffers is not orig._buffers \
                or self._modules is not orig._modules or "weight" in self.__dict__ \
                or parametrized(self) or parametrized(orig):
            raise RuntimeError(
                f"triton_dsd: {where} no longer shares its tensors with the module it stands "
                f"for (an nn.DataParallel replica, pruning or a parametrization after "
                f"convert). Use DistributedDataParallel, or prune before triton_dsd.convert")


class Bypassed(_Standing):
    """Stands at a module path whose work a :class:`SeparableChain` does (see
    :class:`_Standing`: same parameters, buffers, children and attributes as the module it
    replaces). Called with what the chain returned, it passes it through; called with
    anything else (directly, or from a slice of a Sequential that starts past the chain's
    head) it runs the original module. ``.original`` is the replaced module (``to_eager``
    puts it back)."""

    def __init__(self, original: nn.Module, head: str) -> None:
        super().__init__()
        self.head = head
        self._stand_for(original)
        self._from_head = None  # a weak reference to the chain's last output

    def forward(self, x, *args, **kwargs):
        ref = self.__dict__.get("_from_head")
        if torch.compiler.is_compiling() or (ref is not None and ref() is x and not args
                                             and not kwargs):
            return x
        return self.synced()(x, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"computed by {self.head or '<root>'}: {self.original!r}"


def batch_norm_folds(bn: nn.Module) -> bool:
    """True if batch norm ``bn`` normalises with its running statistics (eval mode, tracking
    them), so that it is a per-channel scale and shift."""
    return not bn.training and getattr(bn, "running_mean", None) is not None


def _fingerprint(m: nn.Module, own: bool = True):
    """What a module computes by, apart from its tensors: its plain attributes (``own``) and
    its children's, recursively (an activation's ``approximate``, a Dropout's ``p``, the
    ``act`` child of timm's BatchNormAct2d)."""
    attrs = tuple(sorted((k, repr(v)) for k, v in vars(m).items()
                         if own and not k.startswith("_") and k != "training"))
    return attrs, tuple((n, id(c), _fingerprint(c)) for n, c in m._modules.items()
                        if c is not None)


class SeparableChain(_Standing):
    """A depthwise conv and what follows it up to and past a 1x1 conv, as one module:
    dw -> [batch norm] -> [activation] -> pw -> [batch norm] -> [activation]. It stands at the
    depthwise conv's path for it (:class:`_Standing`: same parameters and attributes; ``.conv``
    is the original conv); the other modules stay at their paths as :class:`Bypassed` slots.

    Forward: while every batch norm of the chain uses its running statistics (eval mode), ONE
    fused launch with the batch norms folded into the kernel's epilogues (``mid_*`` between
    the stages, ``out_*`` after; ``triton_dsd.epilogue``). A batch norm in training mode
    needs the batch statistics of its input, so then the chain runs unfused: the Triton
    depthwise, the original modules in order (the batch norm updates its running
    statistics exactly as eager does), the Triton pointwise at the pointwise slot.

    A LayerNorm over the channels between the stages (timm's LayerNorm2d, or torchvision's
    ConvNeXt ``dw -> Permute -> LayerNorm -> Linear``, where the chain's output is permuted
    as the Linear's was) is the kernel's ``mid_norm``, in train and eval mode alike.

    Before each call (outside torch.compile) it checks that the chain is as convert left it
    and raises RuntimeError otherwise, rather than compute something else: a slot replaced at
    its path, hooks registered on a slot since, an activation or identity link changed
    (``nn.GELU().approximate``, a Dropout's ``p``), tensors no longer shared
    (nn.DataParallel replicas, pruning after convert).

    ``links``: (slot, role, activation) in order; roles 'permute', 'mid_norm', 'mid_act',
    'pw', 'out_norm', 'out_act', 'identity'; activation is the epilogue name of an act link
    or of the activation a norm module applies after normalising (timm's BatchNormAct2d)."""

    def __init__(self, dw: nn.Module, links, padding=None) -> None:
        super().__init__()
        self.links = tuple(links)
        self.padding = dw.padding if padding is None else padding
        self._n_spatial = 1 if isinstance(dw, nn.Conv1d) else 2
        # a channels-last chain (dw -> permute -> LayerNorm -> Linear, torchvision's ConvNeXt)
        # returns the pointwise output permuted as its Linear did
        self.permuted = any(r == "permute" for _, r, _ in self.links)
        self._homes = {}  # slot -> (its parent module, its name there): set by convert
        self._fingerprints = [(slot, _fingerprint(slot.original, not r.endswith("norm")))
                              for slot, r, _ in self.links if r != "pw"]
        self._stand_for(dw)

    @property
    def conv(self) -> nn.Module:
        """The original depthwise conv."""
        return self.original

    def _link(self, role: str):
        return next(((s, a) for s, r, a in self.links if r == role), (None, None))

    def _check(self) -> None:
        where = "a module of this chain"
        self._check_standing("the depthwise conv of this chain")
        for slot, _, _ in self.links:
            home = self._homes.get(slot)
            name = home[1] if home else where
            slot._check_standing(name)
            if home is not None and home[0]._modules.get(home[1]) is not slot:
                raise RuntimeError(
                    f"triton_dsd: the module at '{name}' was replaced after triton_dsd.convert "
                    f"fused it into a SeparableChain; the chain would compute the old one. "
                    f"Convert again (or run triton_dsd.to_eager first)")
        for slot, before in self._fingerprints:
            if _fingerprint(slot.original, before[0] != ()) != before:
                raise RuntimeError(
                    f"triton_dsd: '{self._homes.get(slot, (None, where))[1]}' "
                    f"({type(slot.original).__name__}) changed after triton_dsd.convert fused "
                    f"it (an attribute or child that decides what it computes); convert again")

    def _epilogue(self, norm_role: str, act_role: str, dtype):
        """(scale, shift, act, norm, eps) of one side, or None if a batch norm there cannot
        fold; a layer norm over the channels (ConvNeXt) is the kernel's norm with its weight
        and bias as the scale and shift."""
        norm, norm_act = self._link(norm_role)
        act_slot, act = self._link(act_role)
        scale = shift = kind = None
        eps = 1e-5
        if norm is not None:
            mod = norm.synced()
            if isinstance(mod, nn.LayerNorm):
                kind, eps, scale, shift = "layer_norm", mod.eps, mod.weight, mod.bias
            elif batch_norm_folds(mod):
                scale, shift = epilogue.fold_batch_norm(mod, dtype)
            else:
                return None
        return scale, shift, act if act is not None else norm_act, kind, eps

    def forward(self, x: Tensor) -> Tensor:
        compiling = torch.compiler.is_compiling()
        if not compiling:
            self._check()
        y = self._compute(x)
        if not compiling:  # the slots pass exactly this through, and run anything else
            ref = weakref.ref(y)
            for slot, _, _ in self.links:
                slot._from_head = ref
        return y

    def _compute(self, x: Tensor) -> Tensor:
        dw = self.synced()
        pw = self._link("pw")[0].synced()
        _checks.check_layer_input(type(self).__name__, x, dw.in_channels, self._n_spatial)
        acc = x.dtype if x.dtype == torch.float64 else torch.float32
        mid = self._epilogue("mid_norm", "mid_act", acc)
        out = self._epilogue("out_norm", "out_act", acc)
        # a non-'zeros' padding_mode pads first (as nn.Conv does); else our padding, which
        # may be 'tf_same' (timm's Conv2dSame keeps padding 0 and pads in its forward)
        xin, padding = _padded(dw, x) if dw.padding_mode != "zeros" else (x, self.padding)
        ones = (1,) * self._n_spatial
        if mid is not None and out is not None:
            fn = Fd.dsd_conv2d if self._n_spatial == 2 else Fd.dsd_conv1d
            y = fn(xin, dw.weight, dw.bias, pw.weight.view(*pw.weight.shape[:2], *ones),
                   pw.bias, dw.stride, padding, dw.dilation, fused=True, mid_scale=mid[0],
                   mid_shift=mid[1], mid_act=mid[2], mid_norm=mid[3], mid_eps=mid[4],
                   out_scale=out[0], out_shift=out[1], out_act=out[2])
            if self.permuted:  # (N, M, *spatial) -> (N, *spatial, M), as the Linear gave it
                y = y.permute(0, *range(2, 2 + self._n_spatial), 1).contiguous()
            return y
        dwf = Fd.depthwise_conv2d if self._n_spatial == 2 else Fd.depthwise_conv1d
        pwf = Fd.pointwise_conv2d if self._n_spatial == 2 else Fd.pointwise_conv1d
        v = dwf(xin, dw.weight, dw.bias, dw.stride, padding, dw.dilation)
        for slot, role, _ in self.links:
            if role == "pw" and not self.permuted:
                v = pwf(v, pw.weight, pw.bias)
            else:  # batch statistics (or a Linear): the module itself
                v = slot.synced()(v)
        return v

    def extra_repr(self) -> str:
        roles = ", ".join(f"{r}={type(s.original).__name__}" + (f"({a})" if a else "")
                          for s, r, a in self.links)
        return f"{self.original!r}, padding={self.padding!r}, {roles}"
