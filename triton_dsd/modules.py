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
