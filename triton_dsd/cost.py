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
from typing import Optional, Sequence, Tuple, Union

from triton_dsd import shapes

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
    y_bytes: int = 0
    dtype_bytes: int = 2

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
               bias: bool = True, dtype_bytes: int = 2,
               pads: Optional[Sequence[int]] = None) -> LayerCost:
    """Parameters, multiply-adds and ideal bytes of one layer (2D; 1D is H = 1, KH = 1).

    ``padding`` as the 2D layers take it, or ``pads`` = (top, bottom, left, right) explicitly
    (``Problem.pads``; 1D problems have no vertical padding).
    Ideal bytes: every input read once and every output written once (weights included);
    the unfused pair also writes and reads the depthwise output z.
    """
    (kh, kw), (dh, dw), (sh, sw) = _pair(kernel_size), _pair(dilation), _pair(stride)
    if pads is None:
        pads = shapes.resolve_padding(padding, (kh, kw), (sh, sw), (dh, dw), "layer_cost")
    oh, ow = shapes.out_sizes((H, W), (kh, kw), (sh, sw), pads, (dh, dw))
    if oh < 1 or ow < 1:
        raise ValueError(f"layer_cost: the output would be empty ({oh}x{ow}): the dilated "
                         f"kernel ({dh * (kh - 1) + 1}x{dw * (kw - 1) + 1}) is larger than the "
                         f"padded input")
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
        bytes_fused=x_bytes + w_bytes + y_bytes, bytes_unfused=x_bytes + w_bytes + y_bytes + 2 * z_bytes,
        y_bytes=y_bytes, dtype_bytes=dtype_bytes)


def step_cost(N: int, C: int, M: int, K: int, dilation: int = 1, depth_multiplier: int = 1,
              bias: bool = True, dtype_bytes: int = 2) -> LayerCost:
    """One decode frame of a causal 1D layer for N streams (``functional.dsd_conv1d_step``).

    Ideal bytes, the floor of a step: the weights (read once, whatever N: at small N they are
    nearly all of it), x_t and y_t, the K-1 state frames the taps read and the one frame the
    state gains (a ring buffer's traffic; a state kept oldest-first, as ours is, also moves its
    other d*(K-1) - 1 frames, which this floor does not count). MACs: N*(C*m*K + C*m*M)."""
    cm = C * depth_multiplier
    p_dw = cm * K + (cm if bias else 0)
    p_pw = cm * M + (M if bias else 0)
    x_bytes = N * C * dtype_bytes
    y_bytes = N * M * dtype_bytes
    state_bytes = N * C * (K - 1 + (1 if dilation * (K - 1) > 0 else 0)) * dtype_bytes
    w_bytes = (p_dw + p_pw) * dtype_bytes
    fused = x_bytes + y_bytes + w_bytes + state_bytes
    return LayerCost(
        out_hw=(1, 1), params_depthwise=p_dw, params_pointwise=p_pw,
        params_dense=C * M * K + (M if bias else 0), macs_depthwise=N * cm * K,
        macs_pointwise=N * cm * M, macs_dense=N * C * M * K, bytes_fused=fused,
        bytes_unfused=fused + 2 * N * cm * dtype_bytes, y_bytes=y_bytes, dtype_bytes=dtype_bytes)


@dataclasses.dataclass(frozen=True)
class Device:
    name: str
    bandwidth: float  # bytes/s (HBM, datasheet)
    matrix_flops: float  # dense bf16/fp16 tensor-core FLOP/s (datasheet)
    vector_flops: float  # fp32 FMA FLOP/s on the CUDA cores (datasheet)


#: datasheet peaks (SXM parts); every figure made from them is labelled a model
DEVICES = {
    "A100": Device("A100", 2.039e12, 312e12, 19.5e12),
    "H100": Device("H100", 3.35e12, 989e12, 67e12),
    "H200": Device("H200", 4.8e12, 989e12, 67e12),
}


def device_for(gpu_name: str) -> Device:
    """The datasheet entry whose name appears in a GPU name ('NVIDIA H200' -> H200)."""
    for key, dev in DEVICES.items():
        if key.lower() in gpu_name.lower():
            return dev
    raise KeyError(f"no datasheet peaks for {gpu_name!r}; known: {sorted(DEVICES)} "
                   f"(pass --bandwidth and --flops)")


#: backward moves about twice the forward's bytes and does twice its FLOPs (dX and dW); a decode
#: step's LayerCost (``step_cost``) is already one frame
MODE_FACTOR = {"fwd": 1, "bwd": 2, "fwd+bwd": 3, "step": 1}


def op_work(c: LayerCost, op: str, mode: str = "fwd") -> Tuple[float, float, float]:
    """(ideal bytes, vector FLOPs, matrix FLOPs) of one op: 'dsd' (the whole layer at its
    fused minimum traffic), 'depthwise' or 'pointwise'."""
    f = MODE_FACTOR[mode]
    dtype_bytes = c.dtype_bytes
    if op == "dsd":
        return f * c.bytes_fused, f * 2.0 * c.macs_depthwise, f * 2.0 * c.macs_pointwise
    z = (c.bytes_unfused - c.bytes_fused) / 2  # the depthwise output's bytes
    w_dw, w_pw = c.params_depthwise * dtype_bytes, c.params_pointwise * dtype_bytes
    if op == "depthwise":
        x = c.bytes_fused - w_dw - w_pw - c.y_bytes
        return f * (x + w_dw + z), f * 2.0 * c.macs_depthwise, 0.0
    if op == "pointwise":
        return f * (z + w_pw + c.y_bytes), 0.0, f * 2.0 * c.macs_pointwise
    raise ValueError(f"unknown op {op!r}")


def roofline_ms(c: LayerCost, op: str, mode: str, dev: Device) -> float:
    """The floor time: max(ideal bytes / bandwidth, vector FLOPs / vector peak + matrix FLOPs /
    matrix peak), the matrix peak halved for fp32 (TF32). No kernel can beat it;
    % of roofline = floor / measured."""
    b, fv, fm = op_work(c, op, mode)
    matrix = dev.matrix_flops / (2 if c.dtype_bytes == 4 else 1)
    return 1e3 * max(b / dev.bandwidth, fv / dev.vector_flops + fm / matrix)
