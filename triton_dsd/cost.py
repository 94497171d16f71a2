"""Cost model of the depthwise-separable dilated convolution, stated correctly.

Per output pixel the depthwise stage does C*m*KH*KW multiply-adds and the pointwise stage
C*m*M. Parameters: C*m*KH*KW (+ C*m bias) and C*m*M (+ M bias), against C*M*KH*KW (+ M) for
the dense convolution with the same receptive field: a ratio of about 1/M + 1/(KH*KW) at m=1.
Dilation changes the receptive field, (KH-1)*d + 1, not the cost.

(The source article's "cost" (H*W*C*K*K + H*W*C*M) / (C*K*K + M) divides operations by
parameters, which is no cost at all, and it counts the depthwise output at the input size
whatever the padding.)
"""
from __future__ import annotations

import dataclasses
from typing import Tuple, Union

Pair = Union[int, Tuple[int, int]]


def _pair(v: Pair) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


@dataclasses.dataclass(frozen=True)
class LayerCost:
    out_hw: Tuple[int, int]
    params_depthwise: int
    params_pointwise: int
    params_dense: int
    macs_depthwise: int
    macs_pointwise: int
    macs_dense: int
    bytes_fused: int
    bytes_unfused: int

    @property
    def params(self) -> int:
        return self.params_depthwise + self.params_pointwise

    @property
    def macs(self) -> int:
        return self.macs_depthwise + self.macs_pointwise

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def param_ratio_to_dense(self) -> float:
        return self.params / self.params_dense

    @property
    def mac_ratio_to_dense(self) -> float:
        return self.macs / self.macs_dense


def layer_cost(N: int, C: int, M: int, H: int, W: int, kernel_size: Pair, dilation: Pair = 1,
               stride: Pair = 1, padding: Union[str, Pair] = 0, depth_multiplier: int = 1,
               bias: bool = True, dtype_bytes: int = 2) -> LayerCost:
    """Parameters, multiply-adds and ideal bytes of one layer (2D; 1D is H = 1, KH = 1).

    Ideal bytes: every input read once and every output written once (weights included);
    the unfused pair also writes and reads the depthwise output z.
    """
    (kh, kw), (dh, dw), (sh, sw) = _pair(kernel_size), _pair(dilation), _pair(stride)
    if isinstance(padding, str):
        if padding == "valid":
            pads = (0, 0, 0, 0)
        elif padding == "same":
            pads = (dh * (kh - 1), dw * (kw - 1))
            pads = (pads[0] // 2, pads[0] - pads[0] // 2, pads[1] // 2, pads[1] - pads[1] // 2)
        else:
            raise ValueError(f"layer_cost: unknown `padding` {padding!r}")
    else:
        ph, pw = _pair(padding)
        pads = (ph, ph, pw, pw)
    oh = (H + pads[0] + pads[1] - dh * (kh - 1) - 1) // sh + 1
    ow = (W + pads[2] + pads[3] - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"layer_cost: the output would be empty ({oh}x{ow})")
    cm = C * depth_multiplier
    p_dw = cm * kh * kw + (cm if bias else 0)
    p_pw = cm * M + (M if bias else 0)
    p_dense = C * M * kh * kw + (M if bias else 0)
    pix = N * oh * ow
    x_bytes = N * C * H * W * dtype_bytes
    z_bytes = pix * cm * dtype_bytes
    y_bytes = pix * M * dtype_bytes
    w_bytes = (p_dw + p_pw) * dtype_bytes
    return LayerCost(
        out_hw=(oh, ow), params_depthwise=p_dw, params_pointwise=p_pw, params_dense=p_dense,
        macs_depthwise=pix * cm * kh * kw, macs_pointwise=pix * cm * M,
        macs_dense=pix * C * M * kh * kw,
        bytes_fused=x_bytes + w_bytes + y_bytes, bytes_unfused=x_bytes + w_bytes + y_bytes + 2 * z_bytes)
