"""nn.Modules: they hold parameters and call the functional API (they never launch kernels).

``DepthwiseConv2d`` / ``DepthwiseConv1d`` are drop-ins for ``nn.Conv2d(C, C*m, k, groups=C, ...)``
/ ``nn.Conv1d``: they subclass them, so constructor defaults, parameter names, shapes, init,
``extra_repr`` and state_dicts are nn.Conv's own; only the forward computation differs.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from triton_dsd import _checks, functional as Fd


def _check_depthwise_channels(cls: str, in_channels, out_channels, groups) -> None:
    for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{cls}: `{name}` must be a positive int; got {v!r}")
    if out_channels % in_channels != 0:
        raise ValueError(f"{cls}: `out_channels` ({out_channels}) must be a multiple of "
                         f"`in_channels` ({in_channels}): out = in * depth_multiplier")
    if groups is not None and groups != in_channels:
        raise ValueError(f"{cls}: a depthwise conv has groups == in_channels ({in_channels}); "
                         f"got `groups`={groups!r}")


class DepthwiseConv2d(nn.Conv2d):
    """Dilated depthwise 2D conv on the Triton kernels; a drop-in for
    ``nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups=in_channels, bias, padding_mode)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, bias: bool = True, padding_mode: str = "zeros", device=None,
                 dtype=None, *, groups: Optional[int] = None) -> None:
        _check_depthwise_channels(type(self).__name__, in_channels, out_channels, groups)
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=in_channels, bias=bias,
                         padding_mode=padding_mode, device=device, dtype=dtype)

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        _checks.check_layer_input(type(self).__name__, input, self.in_channels, 2)
        padding = self.padding
        if self.padding_mode != "zeros":  # as nn.Conv2d: pad with the mode, then convolve
            input = nn.functional.pad(input, self._reversed_padding_repeated_twice,
                                      mode=self.padding_mode)
            padding = 0
        return Fd.depthwise_conv2d(input, weight, bias, self.stride, padding, self.dilation)


class DepthwiseConv1d(nn.Conv1d):
    """Dilated depthwise 1D conv on the Triton kernels; a drop-in for
    ``nn.Conv1d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups=in_channels, bias, padding_mode)``.

    ``padding='causal'`` is accepted too (left pad dilation*(kernel_size-1), output length =
    input length), which nn.Conv1d does not have.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, bias: bool = True, padding_mode: str = "zeros", device=None,
                 dtype=None, *, groups: Optional[int] = None) -> None:
        _check_depthwise_channels(type(self).__name__, in_channels, out_channels, groups)
        causal = padding == "causal"
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         padding=0 if causal else padding, dilation=dilation,
                         groups=in_channels, bias=bias, padding_mode=padding_mode,
                         device=device, dtype=dtype)
        if causal:
            if self.stride[0] != 1:
                raise ValueError(f"{type(self).__name__}: `padding`='causal' needs stride 1; "
                                 f"got stride {stride!r}")
            self.padding = "causal"
            total = self.dilation[0] * (self.kernel_size[0] - 1)
            self._reversed_padding_repeated_twice = [total, 0]

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        _checks.check_layer_input(type(self).__name__, input, self.in_channels, 1)
        padding = self.padding
        if self.padding_mode != "zeros":
            input = nn.functional.pad(input, self._reversed_padding_repeated_twice,
                                      mode=self.padding_mode)
            padding = 0
        return Fd.depthwise_conv1d(input, weight, bias, self.stride, padding, self.dilation)


class PointwiseConv2d(nn.Conv2d):
    """1x1 conv on the Triton GEMM; a drop-in for ``nn.Conv2d(in_channels, out_channels, 1)``."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, device=None,
                 dtype=None) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias, device=device, dtype=dtype)

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        _checks.check_layer_input(type(self).__name__, input, self.in_channels, 2)
        return Fd.pointwise_conv2d(input, weight, bias)


class PointwiseConv1d(nn.Conv1d):
    """1x1 conv on the Triton GEMM; a drop-in for ``nn.Conv1d(in_channels, out_channels, 1)``."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, device=None,
                 dtype=None) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias, device=device, dtype=dtype)

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        _checks.check_layer_input(type(self).__name__, input, self.in_channels, 1)
        return Fd.pointwise_conv1d(input, weight, bias)


_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _check_separable(cls: str, n_spatial: int, in_channels, out_channels, kernel_size, dilation,
                     padding, stride, depth_multiplier, padding_mode) -> None:
    """Constructor checks of the separable layers (ValueError naming the argument)."""
    for name, v in (("in_channels", in_channels), ("out_channels", out_channels),
                    ("depth_multiplier", depth_multiplier)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{cls}: `{name}` must be a positive int; got {v!r}")
    _checks.positive_tuple(cls, "kernel_size", kernel_size, n_spatial)
    strides = _checks.positive_tuple(cls, "stride", stride, n_spatial)
    _checks.positive_tuple(cls, "dilation", dilation, n_spatial)
    if padding_mode not in _PADDING_MODES:
        raise ValueError(f"{cls}: `padding_mode` must be one of {_PADDING_MODES}; got "
                         f"{padding_mode!r}")
    if isinstance(padding, str):
        allowed = _checks.PADDING_STRINGS_1D if n_spatial == 1 else _checks.PADDING_STRINGS_2D
        if padding not in allowed:
            hint = " ('causal' is for 1D only)" if padding == "causal" else ""
            raise ValueError(f"{cls}: `padding` must be an int, a tuple or one of {allowed}{hint}; "
                             f"got {padding!r}")
        if padding in ("same", "causal") and any(s != 1 for s in strides):
            raise ValueError(f"{cls}: `padding`='{padding}' needs stride 1; got stride {stride!r}")
    else:
        pads = _checks.int_tuple(cls, "padding", padding, n_spatial)
        if any(p < 0 for p in pads):
            raise ValueError(f"{cls}: `padding` must be >= 0; got {padding!r}")


class _Separable(nn.Module):
    """Shared body of the Triton separable layers: .depthwise then .pointwise, one functional call."""

    _n_spatial = 2

    def __init__(self, in_channels, out_channels, kernel_size, dilation, padding, stride, bias,
                 depth_multiplier, padding_mode, fused, device, dtype) -> None:
        super().__init__()
        name = type(self).__name__
        _check_separable(name, self._n_spatial, in_channels, out_channels, kernel_size, dilation,
                         padding, stride, depth_multiplier, padding_mode)
        dw_cls, pw_cls = ((DepthwiseConv2d, PointwiseConv2d) if self._n_spatial == 2
                          else (DepthwiseConv1d, PointwiseConv1d))
        cm = in_channels * depth_multiplier
        self.depthwise = dw_cls(in_channels, cm, kernel_size, stride=stride, padding=padding,
                                dilation=dilation, bias=bias, padding_mode=padding_mode,
                                device=device, dtype=dtype)
        self.pointwise = pw_cls(cm, out_channels, bias=bias, device=device, dtype=dtype)
        self.fused = bool(fused)

    in_channels = property(lambda self: self.depthwise.in_channels)
    out_channels = property(lambda self: self.pointwise.out_channels)
    depth_multiplier = property(lambda self: self.depthwise.out_channels // self.depthwise.in_channels)

    def forward(self, x: Tensor) -> Tensor:
        dw, pw = self.depthwise, self.pointwise
        _checks.check_layer_input(type(self).__name__, x, dw.in_channels, self._n_spatial)
        padding = dw.padding
        if dw.padding_mode != "zeros":
            x = nn.functional.pad(x, dw._reversed_padding_repeated_twice, mode=dw.padding_mode)
            padding = 0
        fn = Fd.dsd_conv2d if self._n_spatial == 2 else Fd.dsd_conv1d
        return fn(x, dw.weight, dw.bias, pw.weight, pw.bias, dw.stride, padding, dw.dilation,
                  fused=self.fused)

    def extra_repr(self) -> str:
        dw = self.depthwise
        s = (f"{dw.in_channels}, {self.out_channels}, kernel_size={dw.kernel_size}, "
             f"dilation={dw.dilation}, padding={dw.padding}, stride={dw.stride}")
        if self.depth_multiplier != 1:
            s += f", depth_multiplier={self.depth_multiplier}"
        if dw.bias is None:
            s += ", bias=False"
        if dw.padding_mode != "zeros":
            s += f", padding_mode={dw.padding_mode}"
        return s + f", fused={self.fused}"


class DepthwiseSeparableDilatedConv2d(_Separable):
    """Depthwise-separable dilated 2D conv on the Triton kernels (fused forward by default).

    The first five parameters are those of the source article's class, so code written for it
    keeps working positionally; ``.depthwise`` / ``.pointwise`` hold its two convolutions'
    parameters (state_dict keys ``depthwise.weight, depthwise.bias, pointwise.weight,
    pointwise.bias``), initialised as nn.Conv2d initialises them.
    """

    _n_spatial = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size, dilation=1, padding=0, *,
                 stride=1, bias: bool = True, depth_multiplier: int = 1,
                 padding_mode: str = "zeros", fused: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, dilation, padding, stride, bias,
                         depth_multiplier, padding_mode, fused, device, dtype)


class DepthwiseSeparableDilatedConv1d(_Separable):
    """Depthwise-separable dilated 1D conv (TCN / WaveNet / separable-conv speech and NLP
    models) on the Triton kernels; ``padding='causal'`` pads dilation*(kernel_size-1) on the left."""

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
            x = nn.functional.pad(x, (dw.dilation[0] * (dw.kernel_size[0] - 1), 0), mode=mode)
        return self.pointwise(self.depthwise(x))


class EagerDepthwiseSeparableDilatedConv2d(_EagerSeparable):
    """Eager PyTorch baseline with the constructor of :class:`DepthwiseSeparableDilatedConv2d`."""

    _n_spatial = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size, dilation=1, padding=0, *,
                 stride=1, bias: bool = True, depth_multiplier: int = 1,
                 padding_mode: str = "zeros", fused: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, dilation, padding, stride, bias,
                         depth_multiplier, padding_mode, device, dtype)


class EagerDepthwiseSeparableDilatedConv1d(_EagerSeparable):
    """Eager PyTorch baseline with the constructor of :class:`DepthwiseSeparableDilatedConv1d`."""

    _n_spatial = 1

    def __init__(self, in_channels: int, out_channels: int, kernel_size, dilation=1, padding=0, *,
                 stride=1, bias: bool = True, depth_multiplier: int = 1,
                 padding_mode: str = "zeros", fused: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, dilation, padding, stride, bias,
                         depth_multiplier, padding_mode, device, dtype)
