"""Model conversion: swap eager depthwise / separable convolutions for the Triton layers, and back.

``convert(model)`` replaces, recursively:

1. every eager separable module — :class:`EagerDepthwiseSeparableDilatedConv1d/2d`, and the
   source article's class (a module named ``DepthwiseSeparableDilatedConv2d`` whose only
   children are a depthwise ``depthwise`` conv and a 1x1 ``pointwise`` conv) — by
   :class:`DepthwiseSeparableDilatedConv1d/2d`;
2. inside an ``nn.Sequential``, a depthwise conv immediately followed by a 1x1 conv (stride 1,
   no padding, groups 1, matching channels) by ONE separable module (fused forward); the 1x1
   slot becomes ``nn.Identity`` so later indices stay where they were;
3. every other depthwise ``nn.Conv1d/2d`` (groups == in_channels) by DepthwiseConv1d/2d.

Weights are carried over (the same Parameter objects, so optimizers built before the
conversion keep working), outputs are unchanged. ``to_eager`` undoes each kind of replacement.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from typing import List, Tuple, Union

from torch import nn

from triton_dsd import modules as M

log = logging.getLogger("triton_dsd")

Conv = Union[nn.Conv1d, nn.Conv2d]


@dataclasses.dataclass
class Replacement:
    name: str
    old: str
    new: str

    def __str__(self) -> str:
        return f"{self.name or '<root>'}: {self.old} -> {self.new}"


def _dims(conv: nn.Module) -> int:
    return 1 if isinstance(conv, nn.Conv1d) else 2


def _is_depthwise(m: nn.Module) -> bool:
    """A plain nn.Conv1d/2d with groups == in_channels (out = in * depth multiplier)."""
    return (type(m) in (nn.Conv1d, nn.Conv2d) and m.groups == m.in_channels
            and m.out_channels % m.in_channels == 0)


def _is_pointwise(m: nn.Module, channels: int, dims: int) -> bool:
    """A plain 1x1 nn.Conv1d/2d (stride 1, no padding, groups 1) reading ``channels`` channels."""
    return (type(m) is (nn.Conv1d if dims == 1 else nn.Conv2d) and m.in_channels == channels and m.groups == 1
            and all(k == 1 for k in m.kernel_size) and all(s == 1 for s in m.stride)
            and all(d == 1 for d in m.dilation)
            and (m.padding == "valid" or m.padding == "same" or all(p == 0 for p in m.padding)))


def _depthwise_from(conv: Conv) -> nn.Module:
    cls = M.DepthwiseConv1d if _dims(conv) == 1 else M.DepthwiseConv2d
    new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
              conv.dilation, conv.bias is not None, conv.padding_mode,
              device=conv.weight.device, dtype=conv.weight.dtype)
    new.weight, new.bias = conv.weight, conv.bias
    return new.train(conv.training)


def _separable_from(dw: Conv, pw: Conv, padding=None) -> nn.Module:
    """One separable module holding the very Parameters of ``dw`` and ``pw``."""
    cls = M.DepthwiseSeparableDilatedConv1d if _dims(dw) == 1 else M.DepthwiseSeparableDilatedConv2d
    new = cls(dw.in_channels, pw.out_channels, dw.kernel_size, dw.dilation,
              dw.padding if padding is None else padding, stride=dw.stride, bias=True,
              depth_multiplier=dw.out_channels // dw.in_channels, padding_mode=dw.padding_mode,
              device=dw.weight.device, dtype=dw.weight.dtype)
    new.depthwise.weight, new.depthwise.bias = dw.weight, dw.bias
    new.pointwise.weight, new.pointwise.bias = pw.weight, pw.bias
    new._from_sequential = False
    return new.train(dw.training)


def _is_article_class(m: nn.Module) -> bool:
    children = dict(m.named_children())
    return (type(m).__name__ in ("DepthwiseSeparableDilatedConv2d", "DepthwiseSeparableDilatedConv1d")
            and not isinstance(m, M._Separable) and set(children) == {"depthwise", "pointwise"}
            and type(children["depthwise"]) in (nn.Conv1d, nn.Conv2d)
            and children["depthwise"].groups == children["depthwise"].in_channels
            and _is_pointwise(children["pointwise"], children["depthwise"].out_channels,
                              _dims(children["depthwise"])))


def _convert(module: nn.Module, prefix: str, report: List[Replacement]) -> nn.Module:
    if isinstance(module, M._EagerSeparable) or _is_article_class(module):
        new = _separable_from(module.depthwise, module.pointwise,
                              "causal" if getattr(module, "causal", False) else None)
        report.append(Replacement(prefix, type(module).__name__, type(new).__name__))
        return new
    if isinstance(module, (M._Separable, M.DepthwiseConv1d, M.DepthwiseConv2d)):
        return module
    if _is_depthwise(module):
        new = _depthwise_from(module)
        report.append(Replacement(prefix, type(module).__name__, type(new).__name__))
        return new
    names = list(module._modules)
    if isinstance(module, nn.Sequential):
        i = 0
        while i < len(names) - 1:
            a, b = module._modules[names[i]], module._modules[names[i + 1]]
            if (_is_depthwise(a) and type(b) is type(a)
                    and _is_pointwise(b, a.out_channels, _dims(a))):
                new = _separable_from(a, b)
                new._from_sequential = True
                module._modules[names[i]] = new
                module._modules[names[i + 1]] = nn.Identity()
                report.append(Replacement(f"{prefix}{'.' if prefix else ''}{names[i]}+{names[i + 1]}",
                                          f"{type(a).__name__}+{type(b).__name__}",
                                          type(new).__name__))
                i += 2
                continue
            i += 1
    for name in names:
        child = module._modules[name]
        if child is None:
            continue
        module._modules[name] = _convert(child, f"{prefix}{'.' if prefix else ''}{name}", report)
    return module


def _apply(what: str, walk, model: nn.Module, inplace: bool, verbose: bool,
           return_report: bool):
    """Shared driver of convert / to_eager: copy, walk, log the replacements."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"triton_dsd.{what}: `model` must be an nn.Module; got {type(model).__name__}")
    model = model if inplace else copy.deepcopy(model)
    report: List[Replacement] = []
    model = walk(model, "", report)
    for r in report:
        log.info("%s: %s", what, r)
        if verbose:
            print(f"triton_dsd.{what}: {r}")
    if not report:
        log.info("%s: nothing to replace", what)
    return (model, report) if return_report else model


def convert(model: nn.Module, *, inplace: bool = False, verbose: bool = False,
            return_report: bool = False) -> Union[nn.Module, Tuple[nn.Module, List[Replacement]]]:
    """The model with its eager depthwise and separable convolutions on the Triton kernels.

    inplace=False converts a deep copy. Every replacement is logged on the ``triton_dsd`` logger
    (and printed with verbose=True); return_report=True also returns the list.
    """
    return _apply("convert", _convert, model, inplace, verbose, return_report)


def _eager_conv(new: nn.Module) -> Conv:
    conv = nn.Conv1d if isinstance(new, nn.Conv1d) else nn.Conv2d
    padding = 0 if new.padding == "causal" else new.padding
    old = conv(new.in_channels, new.out_channels, new.kernel_size, new.stride, padding,
               new.dilation, new.groups, new.bias is not None, new.padding_mode,
               device=new.weight.device, dtype=new.weight.dtype)
    old.weight, old.bias = new.weight, new.bias
    return old.train(new.training)


def _to_eager(module: nn.Module, prefix: str, report: List[Replacement]) -> nn.Module:
    if isinstance(module, M._Separable):
        dw = module.depthwise
        dims = 1 if isinstance(dw, nn.Conv1d) else 2
        cls = (M.EagerDepthwiseSeparableDilatedConv1d if dims == 1
               else M.EagerDepthwiseSeparableDilatedConv2d)
        new = cls(dw.in_channels, module.out_channels, dw.kernel_size, dw.dilation, dw.padding,
                  stride=dw.stride, bias=dw.bias is not None,
                  depth_multiplier=module.depth_multiplier, padding_mode=dw.padding_mode,
                  device=dw.weight.device, dtype=dw.weight.dtype)
        new.depthwise = _eager_conv(dw)
        new.pointwise = _eager_conv(module.pointwise)
        report.append(Replacement(prefix, type(module).__name__, type(new).__name__))
        return new.train(module.training)
    if isinstance(module, (M.DepthwiseConv1d, M.DepthwiseConv2d, M.PointwiseConv1d,
                           M.PointwiseConv2d)):
        new = _eager_conv(module)
        report.append(Replacement(prefix, type(module).__name__, type(new).__name__))
        return new
    names = list(module._modules)
    if isinstance(module, nn.Sequential):
        for a, b in zip(names, names[1:]):
            sep = module._modules[a]
            if (isinstance(sep, M._Separable) and getattr(sep, "_from_sequential", False)
                    and isinstance(module._modules[b], nn.Identity)):
                module._modules[a] = _eager_conv(sep.depthwise)
                module._modules[b] = _eager_conv(sep.pointwise)
                report.append(Replacement(f"{prefix}{'.' if prefix else ''}{a}+{b}",
                                          type(sep).__name__, "Conv+Conv"))
    for name in names:
        child = module._modules[name]
        if child is not None:
            module._modules[name] = _to_eager(child, f"{prefix}{'.' if prefix else ''}{name}", report)
    return module


def to_eager(model: nn.Module, *, inplace: bool = False, verbose: bool = False,
             return_report: bool = False) -> Union[nn.Module, Tuple[nn.Module, List[Replacement]]]:
    """Undo :func:`convert`: Triton layers back to plain nn.Conv layers / the eager class."""
    return _apply("to_eager", _to_eager, model, inplace, verbose, return_report)
