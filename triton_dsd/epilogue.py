"""Epilogues of the fused layer: what runs between the two stages and after the pointwise.

The fused layer computes::

    u = depthwise(x) + b_dw
    u = layer_norm(u) over the C*m channels of each pixel      # only with mid_norm
    v = act_mid(u * mid_scale + mid_shift)        # per depthwise channel (C*m)
    y = act_out((v @ w_pw + b_pw) * out_scale + out_shift)   # per output channel (M)

which covers dw -> BN -> act -> pw -> BN -> act with the batch norms folded (eval mode:
``scale = gamma / sqrt(running_var + eps)``, ``shift = beta - running_mean * scale``). The
scale/shift are computed at call time from the batch norm's own tensors (autograd flows to
gamma and beta), never copied. A missing scale/shift is the identity; the activation names
are :data:`ACTIVATIONS`, the normalisations :data:`NORMS` (ConvNeXt's LayerNorm between the
stages: its weight and bias are then the mid scale and shift).

This module holds the names and their kernel codes (the codes themselves are the kernels'
constants, ``kernels/_common.py``), the eager reference of the epilogue and its derivative
(used by the backward, the eager fallback and the tests), and the batch-norm fold.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from triton_dsd.kernels import _common as K

#: activation name -> the kernels' code (``kernels._common.activation``)
ACTIVATIONS = {
    "identity": K.ACT_IDENTITY.value,
    "relu": K.ACT_RELU.value,
    "relu6": K.ACT_RELU6.value,
    "silu": K.ACT_SILU.value,
    "gelu": K.ACT_GELU.value,
    "gelu_tanh": K.ACT_GELU_TANH.value,
    "hardswish": K.ACT_HARDSWISH.value,
}
_NAMES = {code: name for name, code in ACTIVATIONS.items()}


def act_code(where: str, arg: str, name) -> int:
    """The kernel code of activation ``name`` (None is the identity); ValueError naming
    ``arg`` otherwise."""
    if name is None:
        return ACTIVATIONS["identity"]
    if isinstance(name, str) and name in ACTIVATIONS:
        return ACTIVATIONS[name]
    raise ValueError(f"{where}: `{arg}` must be one of {tuple(ACTIVATIONS)} or None; got "
                     f"{name!r}")


def act_name(code: int) -> str:
    return _NAMES[code]


#: normalisation between the stages -> the kernels' code: a layer norm over the C*m channels
#: of each pixel (ConvNeXt), its weight and bias then the mid scale and shift
NORMS = {"layer_norm": K.NORM_LAYER.value}


def norm_code(where: str, arg: str, name) -> int:
    """The kernel code of normalisation ``name`` (None: none); ValueError naming ``arg``."""
    if name is None:
        return K.NORM_NONE.value
    if isinstance(name, str) and name in NORMS:
        return NORMS[name]
    raise ValueError(f"{where}: `{arg}` must be one of {tuple(NORMS)} or None; got {name!r}")


def act_forward(a: Tensor, code: int) -> Tensor:
    """act(a), eager; the kernels compute the same in their accumulator dtype."""
    name = _NAMES[code]
    if name == "identity":
        return a
    if name == "relu":
        return torch.relu(a)
    if name == "relu6":
        return a.clamp(0.0, 6.0)
    if name == "silu":
        return F.silu(a)
    if name == "gelu":
        return F.gelu(a)
    if name == "gelu_tanh":
        return F.gelu(a, approximate="tanh")
    return F.hardswish(a)


def act_grad(a: Tensor, code: int) -> Tensor:
    """d act / d a at ``a`` (PyTorch's own conventions at the kinks: relu' (0) = 0, relu6'
    is 1 on the open interval (0, 6), hardswish' is PyTorch's)."""
    name = _NAMES[code]
    if name == "identity":
        return torch.ones_like(a)
    if name == "relu":
        return (a > 0).to(a.dtype)
    if name == "relu6":
        return ((a > 0) & (a < 6)).to(a.dtype)
    if name == "silu":
        s = torch.sigmoid(a)
        return s * (1 + a * (1 - s))
    if name == "gelu":
        cdf = 0.5 * (1 + torch.erf(a * (1 / math.sqrt(2))))
        pdf = torch.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
        return cdf + a * pdf
    if name == "gelu_tanh":
        k = math.sqrt(2 / math.pi)
        inner = k * (a + 0.044715 * a ** 3)
        t = torch.tanh(inner)
        return 0.5 * (1 + t) + 0.5 * a * (1 - t * t) * k * (1 + 3 * 0.044715 * a * a)
    # hardswish: PyTorch's backward is 0 below -3, 1 above 3, (2a + 3)/6 between (inclusive)
    return torch.where(a < -3, torch.zeros_like(a),
                       torch.where(a <= 3, (2 * a + 3) / 6, torch.ones_like(a)))


class Epilogue(NamedTuple):
    """The epilogues of one fused call (scales/shifts contiguous, in the accumulator dtype:
    float32, or float64 for float64 inputs; None = identity)."""
    mid_scale: Optional[Tensor] = None
    mid_shift: Optional[Tensor] = None
    mid_act: int = 0
    out_scale: Optional[Tensor] = None
    out_shift: Optional[Tensor] = None
    out_act: int = 0
    #: normalisation before the mid scale/shift (``kernels._common``'s NORM_ codes; 1: a layer
    #: norm over the C*m channels of each pixel, mid_scale/mid_shift its weight and bias)
    mid_norm: int = 0
    mid_eps: float = 1e-5

    @property
    def has_mid(self) -> bool:
        return self.mid_scale is not None or self.mid_act != 0 or self.mid_norm != 0

    @property
    def has_out(self) -> bool:
        return self.out_scale is not None or self.out_act != 0

    @property
    def is_identity(self) -> bool:
        return not (self.has_mid or self.has_out)


def apply(v: Tensor, scale: Optional[Tensor], shift: Optional[Tensor], code: int) -> Tensor:
    """act(v * scale + shift) per channel (axis 1), eager."""
    if scale is not None:
        shape = (1, -1) + (1,) * (v.dim() - 2)
        v = v * scale.view(shape) + shift.view(shape)
    return act_forward(v, code)


def fold_batch_norm(bn: torch.nn.modules.batchnorm._BatchNorm, dtype: torch.dtype
                    ) -> Tuple[Tensor, Tensor]:
    """(scale, shift) of an eval-mode batch norm, ``bn(v) == v * scale + shift`` per channel,
    computed from the module's own tensors in ``dtype`` (autograd reaches its weight and
    bias)."""
    inv = torch.rsqrt(bn.running_var.to(dtype) + bn.eps)
    scale = inv if bn.weight is None else bn.weight.to(dtype) * inv
    shift = -bn.running_mean.to(dtype) * scale
    if bn.bias is not None:
        shift = shift + bn.bias.to(dtype)
    return scale, shift
