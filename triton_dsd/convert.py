"""Model conversion: swap eager depthwise / separable convolutions for the Triton layers, and back.

``convert(model)`` walks the model and, where it can prove the result equal:

0. fuses chains ``depthwise conv -> [batch norm] -> [activation] -> 1x1 conv -> [batch norm]
   -> [activation]`` found in each module's ``torch.fx`` trace (the whole model if it traces,
   else its children, and so on), wherever the modules live (named attributes, Sequentials,
   nested ones): each link a module called once on the previous link's output alone, which
   nothing else uses; activations recognised by running them on probe values, never by class
   name. Each chain is proven (float64 copies, train and eval, running statistics included)
   and installed as a :class:`~triton_dsd.modules.SeparableChain` at the depthwise path and
   :class:`~triton_dsd.modules.Bypassed` slots at the others, all holding their own modules'
   parameter and buffer dictionaries: the same state_dict keys. In eval mode a chain is one
   fused launch with its batch norms folded into the kernel's epilogues;
1. replaces each of our eager separable modules (:class:`EagerDepthwiseSeparableDilatedConv1d/2d`)
   by :class:`DepthwiseSeparableDilatedConv1d/2d` (same children names, so the same state_dict
   keys);
2. replaces a module of another class whose only children are a depthwise ``depthwise`` conv
   and a 1x1 ``pointwise`` conv (the source article's class), and which holds no parameters or
   buffers of its own, by the separable layer only when a float64 forward on a random input,
   in train and in eval mode, shows its forward is exactly ``pointwise(depthwise(x))``: a class
   name proves nothing (a user's forward may put an activation between the two);
3. inside an ``nn.Sequential``, fuses a depthwise conv immediately followed by a 1x1 conv
   (stride 1, no padding, groups 1, matching channels) with nothing else to fuse: the
   Sequential becomes a :class:`FusedSequential` whose children keep their names and
   parameters, so the model saves and loads exactly the keys of the original, and the pair
   runs as one fused kernel;
4. swaps every other depthwise ``nn.Conv1d/2d`` (groups == in_channels > 1) for
   ``DepthwiseConv1d/2d`` (a proven TensorFlow-"SAME" conv such as timm's ``Conv2dSame`` with
   ``padding='tf_same'``); a dense conv with one input channel (a grayscale stem) stays dense.

Hooks registered on a converted module move with it (the very same hook dictionaries, so their
handles still remove them). A pair whose convs carry hooks is converted but not fused, so the
hooks still fire. A conv whose weight is not a Parameter (pruning, old-style spectral_norm),
that holds child modules, buffers or attributes nn.Conv does not (quantisation observers), a
parametrized conv, or a subclass of nn.Conv with a forward of its own is left alone. Every
decision, including each module left alone and why, is a line of the report (logged on the
``triton_dsd`` logger; printed with verbose=True). Parameters are the same objects before and
after with ``inplace=True`` (optimizers built before an in-place conversion keep working; the
default converts a deep copy). ``to_eager`` undoes each kind, and leaves (with a report line)
what an nn.Conv cannot hold: a causal DepthwiseConv1d, a wrapped or pruned conv.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
from typing import Callable, List, Optional, Tuple, Union

import torch
import torch.fx
from torch import Tensor, nn

from triton_dsd import dispatch, epilogue, functional as Fd, modules as M, shapes

log = logging.getLogger("triton_dsd")

Conv = Union[nn.Conv1d, nn.Conv2d]
_OURS = (M.DepthwiseConv1d, M.DepthwiseConv2d, M.PointwiseConv1d, M.PointwiseConv2d)

#: the hook dictionaries of an nn.Module, moved as they are onto the module that replaces it
_HOOK_ATTRS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
               "_backward_pre_hooks", "_state_dict_hooks", "_state_dict_pre_hooks",
               "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


@dataclasses.dataclass
class Replacement:
    """One line of the report: ``new`` is empty for a module left as it was (``note`` says why)."""
    name: str
    old: str
    new: str
    note: str = ""

    @property
    def replaced(self) -> bool:
        return bool(self.new)

    def __str__(self) -> str:
        where = self.name or "<root>"
        if not self.new:
            return f"{where}: {self.old} left as is: {self.note}"
        return f"{where}: {self.old} -> {self.new}" + (f" ({self.note})" if self.note else "")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _dims(conv: nn.Module) -> int:
    return 1 if isinstance(conv, nn.Conv1d) else 2


def _has_hooks(m: nn.Module, state_dict: bool = False) -> bool:
    """Forward, pre-forward or backward hooks on ``m`` (and, with ``state_dict``, state-dict
    and load hooks: a fused chain's slots start without them)."""
    if state_dict and any(getattr(m, a, None) for a in _HOOK_ATTRS[7:]):
        return True
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None))


def _carry_hooks(old: nn.Module, new: nn.Module) -> nn.Module:
    """Move ``old``'s hooks (the dictionaries themselves) and train/eval mode onto ``new``."""
    for attr in _HOOK_ATTRS:
        if hasattr(old, attr):
            setattr(new, attr, getattr(old, attr))
    if hasattr(old, "_is_full_backward_hook"):
        new._is_full_backward_hook = old._is_full_backward_hook
    return new.train(old.training)


def _depthwise_like(m: nn.Module) -> bool:
    """An nn.Conv1d/2d (or subclass) with groups == in_channels > 1 and out a multiple of in.

    A dense conv with one input channel (a grayscale stem, in_channels == groups == 1) is also
    a depthwise conv with multiplier M, but it stays dense: cuDNN's dense kernels cover it, our
    depthwise kernels have never been timed on it (no GPU yet), and a stem runs once per image
    (the note of issue 3/4 and the README say so)."""
    return (isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.groups == m.in_channels > 1
            and m.out_channels % m.in_channels == 0)


def _grayscale_stem(m: nn.Module) -> bool:
    return isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.groups == m.in_channels == 1 and \
        m.out_channels > 1 and any(k > 1 for k in m.kernel_size)


_BASE_ATTRS = {}


def _base_attrs(cls: type) -> set:
    """The instance attributes a freshly built nn.Conv of this class has."""
    if cls not in _BASE_ATTRS:
        _BASE_ATTRS[cls] = set(vars(cls(1, 1, 1, device="meta")))
    return _BASE_ATTRS[cls]


def _why_not_swappable(m: nn.Module) -> Optional[str]:
    """None if ``m`` can be swapped for our drop-in as it is (nothing it holds would be lost),
    else the reason."""
    if type(m) not in (nn.Conv1d, nn.Conv2d):
        if torch.nn.utils.parametrize.is_parametrized(m):
            return "its weight is parametrized (torch.nn.utils.parametrize)"
        return f"{type(m).__name__} subclasses nn.Conv with a forward of its own"
    if not isinstance(m.weight, nn.Parameter) or (m.bias is not None
                                                  and not isinstance(m.bias, nn.Parameter)):
        return ("its weight is not a Parameter (pruning or spectral_norm recompute it before "
                "each forward)")
    if m._modules:
        return f"it holds child modules ({', '.join(m._modules)}), e.g. quantisation observers"
    if m._buffers:
        return f"it holds buffers ({', '.join(m._buffers)})"
    extra = set(vars(m)) - _base_attrs(type(m))
    if extra:
        return f"it holds attributes nn.Conv does not ({', '.join(sorted(extra))})"
    return None


def _is_pointwise(m: nn.Module, channels: int, dims: int) -> bool:
    """A plain 1x1 nn.Conv1d/2d (stride 1, no padding, groups 1) reading ``channels`` channels."""
    return (type(m) is (nn.Conv1d if dims == 1 else nn.Conv2d) and m.in_channels == channels
            and m.groups == 1 and all(k == 1 for k in m.kernel_size)
            and all(s == 1 for s in m.stride) and all(d == 1 for d in m.dilation)
            and m.padding_mode == "zeros"
            and (m.padding in ("valid", "same") or all(p == 0 for p in m.padding)))


def _depthwise_from(conv: Conv, padding=None) -> nn.Module:
    """Our depthwise drop-in holding the very Parameters (and hooks) of ``conv`` (with
    ``padding`` in place of the conv's own, e.g. 'tf_same' for timm's Conv2dSame)."""
    cls = M.DepthwiseConv1d if _dims(conv) == 1 else M.DepthwiseConv2d
    new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
              conv.padding if padding is None else padding,
              conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode,
              device="meta", dtype=conv.weight.dtype)
    new.weight, new.bias = conv.weight, conv.bias
    return _carry_hooks(conv, new)


def _pointwise_from(conv: Conv) -> nn.Module:
    cls = M.PointwiseConv1d if _dims(conv) == 1 else M.PointwiseConv2d
    new = cls(conv.in_channels, conv.out_channels, bias=conv.bias is not None, device="meta",
              dtype=conv.weight.dtype)
    new.weight, new.bias = conv.weight, conv.bias
    return _carry_hooks(conv, new)


def _separable_from(dw: Conv, pw: Conv, padding=None) -> nn.Module:
    """One separable module whose children hold the very Parameters of ``dw`` and ``pw``."""
    cls = M.DepthwiseSeparableDilatedConv1d if _dims(dw) == 1 else M.DepthwiseSeparableDilatedConv2d
    new = cls(dw.in_channels, pw.out_channels, dw.kernel_size, dw.dilation,
              dw.padding if padding is None else padding, stride=dw.stride,
              depth_multiplier=dw.out_channels // dw.in_channels, padding_mode=dw.padding_mode,
              device="meta", dtype=dw.weight.dtype)
    new.depthwise = _depthwise_from(dw)
    if padding == "causal":  # the eager class pads by hand; our child pads causally itself
        new.depthwise.padding = "causal"
        new.depthwise._reversed_padding_repeated_twice = [
            shapes.causal_pad(dw.kernel_size[0], dw.dilation[0]), 0]
    new.pointwise = _pointwise_from(pw)
    return new.train(dw.training)


def _example(dw: Conv) -> Tensor:
    """A random float64 CPU input a depthwise conv accepts (fixed seed; the global RNG is
    untouched)."""
    g = torch.Generator().manual_seed(0)
    spatial = [d * (k - 1) + 1 + 5 * s for k, d, s in zip(dw.kernel_size, dw.dilation, dw.stride)]
    return torch.randn(2, dw.in_channels, *spatial, generator=g, dtype=torch.float64)


#: relative difference (to the largest output) a float64 proof allows: rounding only
PROOF_RTOL = 1e-9


def _prove(module: nn.Module, build: Callable[[nn.Module], nn.Module], dw: Conv,
           sizes: int = 1) -> Optional[str]:
    """None if ``build(module)`` computes what ``module`` does, else why not.

    Both run in float64 on CPU copies (so only rounding can differ, and a 1% change of the
    output cannot hide in a half-precision tolerance), in train and in eval mode, on a random
    input, with the default kernel configs (a proof never tunes or warns)."""
    if any(t.is_meta for t in itertools.chain(module.parameters(), module.buffers())):
        return "it is on the meta device: nothing can be run to prove it"
    original = _deepcopy(module).to(device="cpu", dtype=torch.float64)
    for attr in _HOOK_ATTRS:  # hooks on the module itself move to the replacement as they are
        getattr(original, attr, {}).clear()
    candidate = build(original)
    for x in [torch.nn.functional.pad(_example(dw), (0, i) * _dims(dw)) for i in range(sizes)]:
        why = _compare_modes(original, candidate, x)
        if why is not None:
            return why
    return None


def _compare_modes(original: nn.Module, candidate: nn.Module, x: Tensor) -> Optional[str]:
    for training in (True, False):
        original.train(training)
        candidate.train(training)
        try:
            with torch.no_grad(), dispatch.defaults_only():
                want, got = original(x), candidate(x)
        except Exception as e:  # noqa: BLE001 - it cannot run on such an input: not proven
            return f"could not compare on a random input ({type(e).__name__}: {e})"
        if not isinstance(want, Tensor) or want.shape != got.shape:
            return "its output is not the separable conv's (shape differs)"
        err = float((want - got).abs().max())
        scale = float(want.abs().max().clamp_min(1e-30))
        if not err <= PROOF_RTOL * scale:
            return (f"its forward is not pointwise(depthwise(x)) ({'train' if training else 'eval'}"
                    f" mode: a random input differs by {err / scale:.3g} of the output)")
    return None


class ChainSequential(nn.Sequential):
    """An ``nn.Sequential`` holding modules of a fused chain (:class:`~triton_dsd.modules.
    SeparableChain` and its :class:`~triton_dsd.modules.Bypassed` slots): a slice that would
    cut a chain (its head without all its slots, which would compute the whole chain anyway)
    raises instead of computing something else; ``to_eager`` first, or slice before convert."""

    def __getitem__(self, idx):
        out = super().__getitem__(idx)
        if isinstance(idx, slice):
            inside = set(map(id, out.modules()))
            for m in out.modules():
                if isinstance(m, M.SeparableChain) and \
                        not all(id(s) in inside for s, _, _ in m.links):
                    raise RuntimeError(
                        "triton_dsd: this slice cuts a chain that triton_dsd.convert fused "
                        "(its depthwise conv without all the modules after it); slice the "
                        "model before convert, or after triton_dsd.to_eager")
        return out


class FusedSequential(nn.Sequential):
    """An ``nn.Sequential`` in which some (depthwise conv, 1x1 conv) neighbours run as one
    fused kernel. The children keep their names, order and parameters, so the state_dict keys
    are the original Sequential's; a pair whose children carry hooks at run time is run
    through the children, so the hooks fire."""

    def __init__(self, *args, fused_pairs: Tuple[Tuple[str, str], ...] = ()) -> None:
        super().__init__(*args)
        self.fused_pairs = tuple(fused_pairs)

    def _fusable(self, a: nn.Module, b: nn.Module) -> bool:
        dw_cls = M.DepthwiseConv1d if isinstance(a, nn.Conv1d) else M.DepthwiseConv2d
        pw_cls = M.PointwiseConv1d if isinstance(a, nn.Conv1d) else M.PointwiseConv2d
        return M.plain_module(a, dw_cls) and M.plain_module(b, pw_cls)

    def forward(self, x):
        names = list(self._modules)
        pairs = dict(self.fused_pairs)
        i = 0
        while i < len(names):
            a = self._modules[names[i]]
            nxt = names[i + 1] if i + 1 < len(names) else None
            if nxt is not None and pairs.get(names[i]) == nxt and \
                    self._fusable(a, self._modules[nxt]):
                b = self._modules[nxt]
                x, padding = M._padded(a, x)
                fn = Fd.dsd_conv1d if isinstance(a, nn.Conv1d) else Fd.dsd_conv2d
                x = fn(x, a.weight, a.bias, b.weight, b.bias, a.stride, padding, a.dilation,
                       fused=True)
                i += 2
                continue
            x = a(x)
            i += 1
        return x

    def __getitem__(self, idx):
        out = super().__getitem__(idx)
        if isinstance(out, FusedSequential):  # a slice keeps the pairs it still holds
            out.fused_pairs = tuple(p for p in self.fused_pairs
                                    if p[0] in out._modules and p[1] in out._modules)
        return out

    def extra_repr(self) -> str:
        return "fused: " + ", ".join(f"{a}+{b}" for a, b in self.fused_pairs)


def _pair_of(seq: nn.Sequential) -> nn.Module:
    """The fused replacement of a (depthwise, 1x1) nn.Sequential, holding its Parameters."""
    return FusedSequential(_depthwise_from(seq[0]), _pointwise_from(seq[1]),
                           fused_pairs=(("0", "1"),))


def _convert_sequential(module: nn.Sequential, prefix: str,
                        report: List[Replacement]) -> nn.Module:
    """Fuse the (depthwise conv, 1x1 conv) neighbours of a Sequential (or a FusedSequential
    converted again) that are proven equal; their convs become our drop-ins in place."""
    names = list(module._modules)
    pairs = list(getattr(module, "fused_pairs", ()))
    i = 0
    while i < len(names) - 1:
        a, b = module._modules[names[i]], module._modules[names[i + 1]]
        if (_depthwise_like(a) and b is not None and isinstance(b, type(a))
                and _why_not_swappable(a) is None and _is_pointwise(b, a.out_channels, _dims(a))
                and _why_not_swappable(b) is None):
            where = f"{_join(prefix, names[i])}+{names[i + 1]}"
            old = f"{type(a).__name__}+{type(b).__name__}"
            if _has_hooks(a) or _has_hooks(b):
                report.append(Replacement(where, old, "", "hooks on the convs: converted one by "
                                          "one, not fused"))
                i += 1
                continue
            why = _prove(nn.Sequential(a, b), _pair_of, a)
            if why is None:
                dw, pw = _depthwise_from(a), _pointwise_from(b)
                module._modules[names[i]], module._modules[names[i + 1]] = dw, pw
                pairs.append((names[i], names[i + 1]))
                report.append(Replacement(where, old, f"{type(dw).__name__}+{type(pw).__name__}",
                                          "fused, same state_dict keys"))
                i += 2
                continue
            report.append(Replacement(where, old, "", why))
        i += 1
    if isinstance(module, FusedSequential):
        module.fused_pairs = tuple(pairs)
        return module
    if not pairs:
        return module
    new = FusedSequential(fused_pairs=tuple(pairs))
    new._modules = module._modules
    return _carry_hooks(module, new)


# --------------------------------------------------------------------------- chains
_NORM = nn.modules.batchnorm._BatchNorm
#: probe values of an activation: both signs, the kinks of relu6 and hardswish
_PROBE = torch.cat([torch.linspace(-8.0, 8.0, 61, dtype=torch.float64),
                    torch.tensor([-3.0, 0.0, 3.0, 6.0], dtype=torch.float64)])


def _probe_activation(m: nn.Module) -> Optional[str]:
    """The epilogue activation (``epilogue.ACTIVATIONS``) module ``m`` computes, found by
    running a copy of it on probe values in train and eval mode (never by class name), or
    None. Only modules without parameters, buffers or children qualify."""
    if next(m.parameters(), None) is not None or next(m.buffers(), None) is not None or \
            m._modules:
        return None
    probe = _deepcopy(m)
    for attr in _HOOK_ATTRS:
        getattr(probe, attr, {}).clear()
    with torch.random.fork_rng(devices=[]):  # a Dropout probed leaves the global RNG alone
        return _probe_modes(probe)


def _probe_modes(probe: nn.Module) -> Optional[str]:
    found = None
    for training in (True, False):
        probe.train(training)
        try:
            with torch.no_grad():
                out = probe(_PROBE.view(1, 1, 1, -1).clone())
        except Exception:  # noqa: BLE001 - not an elementwise module
            return None
        if not isinstance(out, Tensor) or out.shape != (1, 1, 1, _PROBE.numel()):
            return None
        out = out.reshape(-1)
        names = [n for n, c in epilogue.ACTIVATIONS.items()
                 if out.dtype == torch.float64
                 and torch.allclose(out, epilogue.act_forward(_PROBE, c), rtol=0, atol=1e-12)]
        if len(names) != 1 or (found is not None and names[0] != found):
            return None
        found = names[0]
    return found


def _is_permute_to_channels_last(m: nn.Module, dims: int) -> bool:
    """True if parameter-free ``m`` moves the channel axis last ((N, C, *sp) -> (N, *sp, C)),
    found by running it (torchvision's ``Permute([0, 2, 3, 1])``)."""
    if next(m.parameters(), None) is not None or next(m.buffers(), None) is not None or \
            m._modules:
        return False
    probe = torch.arange(2 * 3 * 5 * (4 if dims == 2 else 1), dtype=torch.float64)
    probe = probe.view(2, 3, *((4, 5) if dims == 2 else (5,)))
    try:
        with torch.no_grad():
            out = _deepcopy(m)(probe)
    except Exception:  # noqa: BLE001 - not a permutation
        return False
    want = probe.permute(0, *range(2, 2 + dims), 1)
    return isinstance(out, Tensor) and out.shape == want.shape and torch.equal(out, want)


def _norm_activation(m: nn.Module) -> Optional[str]:
    """For a batch norm module (nn.BatchNorm1d/2d, SyncBatchNorm, or one that also applies an
    activation after normalising, like timm's BatchNormAct2d with children ``act`` and
    ``drop``): the activation it applies ('identity' for none); None if it is not such a
    module. The chain's proof checks the claim."""
    if not isinstance(m, _NORM):
        return None
    if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm):
        return "identity"
    if not set(m._modules) <= {"act", "drop"}:
        return None
    drop = m._modules.get("drop")
    if drop is not None and _probe_activation(drop) != "identity":
        return None
    act = m._modules.get("act")
    return "identity" if act is None else _probe_activation(act)


def _same_padding_candidate(m: nn.Module) -> bool:
    """A subclass of nn.Conv with a forward of its own that may be TensorFlow "SAME" padding
    (timm's Conv2dSame keeps padding 0 and pads per input size in its forward); a proof on
    two input sizes decides."""
    return (isinstance(m, (nn.Conv1d, nn.Conv2d)) and type(m) not in (nn.Conv1d, nn.Conv2d)
            and not isinstance(m, _OURS) and not torch.nn.utils.parametrize.is_parametrized(m)
            and isinstance(m.weight, nn.Parameter)
            and (m.bias is None or isinstance(m.bias, nn.Parameter))
            and not m._modules and not m._buffers and m.padding_mode == "zeros"
            and not isinstance(m.padding, str) and all(p == 0 for p in m.padding)
            and not set(vars(m)) - _base_attrs(nn.Conv1d if isinstance(m, nn.Conv1d)
                                               else nn.Conv2d))


def _dw_padding(m: nn.Module):
    """The padding our kernels use for depthwise conv ``m``, or None if it is not one."""
    if type(m) in (M.SeparableChain, M.Bypassed) or not _depthwise_like(m) or \
            isinstance(m, _OURS):
        return None
    if _why_not_swappable(m) is None:
        return m.padding
    return "tf_same" if _same_padding_candidate(m) else None


_NOTHING_FOLLOWS = "no 1x1 conv follows"


@dataclasses.dataclass
class _Chain:
    """A proposed chain: the depthwise conv at ``dw_path`` and its links (path, module, role,
    activation) in order; roles 'permute', 'mid_norm', 'mid_act', 'pw', 'out_norm',
    'out_act' and 'identity' (a module computing the identity, left in place)."""
    dw_path: str
    dw: nn.Module
    padding: object
    links: list
    stop: str = ""

    @property
    def fusable(self) -> bool:
        return any(r == "pw" for _, _, r, _ in self.links)

    def modules(self):
        return [self.dw] + [m for _, m, _, _ in self.links]


def _parse_chain(dw_path: str, dw: nn.Module, padding, successors) -> _Chain:
    """Read dw -> [permute] -> [norm] -> [act] -> pw -> [norm] -> [act] off ``successors``
    (an iterator of (path, module) called one after the other, each on the previous one's
    output alone, ending with (why the line ends, None)); the chain stops at the first module
    that does not fit, and says why in ``stop``. After a permute to channels last (torchvision's
    ConvNeXt) the norm is an nn.LayerNorm and the 1x1 an nn.Linear."""
    chain = _Chain(dw_path, dw, padding, [])
    side, norm_seen, act_seen, permuted = "mid", False, False, False
    channels = dw.out_channels
    for path, m in successors:
        if m is None:
            chain.stop = path
            break
        if _has_hooks(m, state_dict=True):
            chain.stop = f"{path} carries hooks"
            break
        if permuted:  # channels last: the 1x1 is an nn.Linear
            is_pw = type(m) is nn.Linear and m.in_features == channels
        else:
            is_pw = _is_pointwise(m, channels, _dims(dw)) and _why_not_swappable(m) is None
        if is_pw:
            if side == "out":
                break
            chain.links.append((path, m, "pw", None))
            side, norm_seen, act_seen = "out", False, False
            channels = m.out_features if permuted else m.out_channels
            continue
        if not chain.links and _is_permute_to_channels_last(m, _dims(dw)):
            chain.links.append((path, m, "permute", None))
            permuted = True
            continue
        if isinstance(m, nn.LayerNorm):
            # over the channels: nn.LayerNorm on channels-last values, or a subclass with a
            # forward of its own over NCHW channels (timm's LayerNorm2d; the proof decides)
            over_channels = tuple(m.normalized_shape) == (channels,) and \
                (type(m) is nn.LayerNorm) == permuted
            if side != "mid" or norm_seen or act_seen or not over_channels:
                chain.stop = (f"{path} ({type(m).__name__}) is not a layer norm over the "
                              f"channels that can follow here")
                break
            chain.links.append((path, m, "mid_norm", None))
            norm_seen = True
            continue
        if isinstance(m, _NORM) and permuted:
            chain.stop = f"{path} ({type(m).__name__}) is a batch norm on channels-last values"
            break
        if isinstance(m, _NORM):
            act = _norm_activation(m)
            if act is None or norm_seen or act_seen or m.num_features != channels:
                chain.stop = (f"{path} ({type(m).__name__}) is not a batch norm (+ activation) "
                              f"that can follow here")
                break
            chain.links.append((path, m, f"{side}_norm", None if act == "identity" else act))
            norm_seen, act_seen = True, act != "identity"
            continue
        act = _probe_activation(m)
        if act == "identity":
            chain.links.append((path, m, "identity", None))
            continue
        if act is None or act_seen:
            what = "a second activation" if act else "not a batch norm, an activation of " + \
                f"{tuple(epilogue.ACTIVATIONS)} or a 1x1 conv"
            chain.stop = f"{path} ({type(m).__name__}) is {what}"
            break
        chain.links.append((path, m, f"{side}_act", act))
        act_seen = True
    while chain.links and chain.links[-1][2] == "identity":
        chain.links.pop()
    if not chain.fusable:
        chain.stop = chain.stop or _NOTHING_FOLLOWS
    return chain


class _LeafTracer(torch.fx.Tracer):
    """Traces a module's forward down to the modules a chain is made of (convs, norms, the
    layers our convert handles as a whole, parameter-free leaf modules)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.Conv1d, nn.Conv2d, _NORM, M.SeparableChain, M.Bypassed,
                          M._Separable, M._EagerSeparable, nn.Linear, nn.LayerNorm)):
            return True
        if not m._modules:  # childless (activations, torchvision's Permute): opaque calls
            return True
        if set(m._modules) == {"depthwise", "pointwise"}:
            return True
        return super().is_leaf_module(m, qualname)


def _trace(module: nn.Module, training: bool):
    """(graph, the nodes whose values the forward stores as attributes) of a copy of
    ``module`` traced in train or eval mode (a copy: tracing runs the forward, which may store
    proxies on the module); None if it does not trace."""
    try:
        copy_ = _deepcopy(module).train(training)
        graph = _LeafTracer().trace(copy_)
    except Exception:  # noqa: BLE001 - data-dependent control flow etc.: look one level down
        return None
    stored = {v.node for m in copy_.modules() for v in vars(m).values()
              if isinstance(v, torch.fx.Proxy)}
    return graph, stored


def _chain_key(chain: _Chain):
    return chain.dw_path, tuple((p, r, a) for p, _, r, a in chain.links), chain.stop


def _traced_chains(module: nn.Module) -> Optional[List[_Chain]]:
    """The chains of ``module``'s traced forward (torch.fx), or None if it does not trace.
    A link is a module called once in the whole graph, on the previous link's output alone,
    which nothing else uses and the forward does not store. The forward is traced in train
    and in eval mode: a chain must be the same in both (a forward may branch on
    ``self.training``)."""
    found = []
    for training in (True, False):
        traced = _trace(module, training)
        if traced is None:
            return None
        found.append(_graph_chains(module, *traced))
    eval_keys = {_chain_key(c): c for c in found[1]}
    chains = []
    for c in found[0]:
        if _chain_key(c) in eval_keys or not c.fusable:
            chains.append(c)
        else:
            chains.append(dataclasses.replace(c, links=[], stop="the forward differs between "
                                              "train and eval mode around it"))
    return chains


def _graph_chains(module: nn.Module, graph, stored) -> List[_Chain]:
    calls = {}
    for n in graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    shared = {id(m) for m, c in _instance_counts(module).items() if c > 1}

    def succ(node):
        """(path, module) of each next link; (why not, None) where the line ends."""
        while True:
            users = list(node.users)
            if node in stored:
                yield f"{node.target}'s output is stored as an attribute", None
                return
            if len(users) != 1:
                yield f"{node.target}'s output has {len(users)} users", None
                return
            u = users[0]
            if u.op == "output":
                yield _NOTHING_FOLLOWS, None
                return
            if u.op != "call_module":
                yield (f"{node.target}'s output goes to {u.op} "
                       f"{getattr(u.target, '__name__', u.target)}"), None
                return
            if u.args != (node,) or u.kwargs:
                yield f"{u.target} takes other inputs too", None
                return
            m = module.get_submodule(u.target)
            if calls[u.target] != 1 or id(m) in shared:
                yield f"{u.target} is called or registered more than once", None
                return
            yield u.target, m
            node = u

    chains = []
    for n in graph.nodes:
        if n.op != "call_module" or calls[n.target] != 1 or len(n.args) != 1 or n.kwargs:
            continue
        m = module.get_submodule(n.target)
        padding = _dw_padding(m)
        if padding is None or id(m) in shared or _has_hooks(m, state_dict=True):
            continue
        chains.append(_parse_chain(n.target, m, padding, succ(n)))
    return chains


def _instance_counts(module: nn.Module) -> dict:
    counts = {}
    for _, m in module.named_modules(remove_duplicate=False):
        counts[m] = counts.get(m, 0) + 1
    return counts


def _chain_head(chain: _Chain, head_path: str):
    """(the SeparableChain, [(path, Bypassed)]) over the chain's very modules."""
    slots, links = [], []
    for path, m, role, act in chain.links:
        slot = M.Bypassed(m, head_path)
        slots.append((path, slot))
        links.append((slot, role, act))
    return M.SeparableChain(chain.dw, links, chain.padding), slots


def _prove_chain(chain: _Chain) -> Optional[str]:
    """None if the chain's head computes what its modules do one after the other, in train and
    in eval mode, in float64 on copies (and the batch norms' running statistics move alike
    in training); else why not. 'tf_same' padding is checked on two input sizes."""
    mods = chain.modules()
    if any(t.is_meta for m in mods for t in itertools.chain(m.parameters(), m.buffers())):
        return "it is on the meta device: nothing can be run to prove it"
    xs = [_example(chain.dw)]
    if chain.padding == "tf_same":
        xs.append(torch.nn.functional.pad(xs[0], (0, 1) * _dims(chain.dw)))
    for training in (True, False):
        for x in xs:
            want_mods = _deepcopy(nn.ModuleList(mods)).to(device="cpu", dtype=torch.float64)
            got_mods = _deepcopy(nn.ModuleList(mods)).to(device="cpu", dtype=torch.float64)
            for m in itertools.chain(want_mods, got_mods):
                m.train(training)
            proposal = _Chain(chain.dw_path, got_mods[0], chain.padding,
                              [(p, got_mods[i + 1], r, a)
                               for i, (p, _, r, a) in enumerate(chain.links)])
            head, _ = _chain_head(proposal, chain.dw_path)
            head.train(training)
            try:
                with torch.no_grad(), dispatch.defaults_only():
                    want = x
                    for m in want_mods[:len(chain.links) + 1]:
                        want = m(want)
                    got = head(x)
            except Exception as e:  # noqa: BLE001 - it cannot run on such an input: not proven
                return f"could not compare on a random input ({type(e).__name__}: {e})"
            mode = "train" if training else "eval"
            if want.shape != got.shape:
                return f"its output shape differs from the modules' ({mode} mode)"
            err = float((want - got).abs().max())
            scale = float(want.abs().max().clamp_min(1e-30))
            if not err <= PROOF_RTOL * scale:
                return (f"the fused chain differs from its modules on a random input by "
                        f"{err / scale:.3g} of the output ({mode} mode)")
            for a, b in zip(want_mods.buffers(), got_mods.buffers()):
                if a.shape != b.shape or not torch.allclose(a.double(), b.double(), rtol=1e-9,
                                                            atol=1e-12):
                    return f"the running statistics move differently ({mode} mode)"
    return None


def _set_path(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    root.get_submodule(parent)._modules[name] = new


def _plain_sequential_pair(chain: _Chain, root: nn.Module) -> bool:
    """A (depthwise, 1x1) pair of neighbours in one nn.Sequential with nothing else in the
    chain: FusedSequential's business (its slices keep working)."""
    if len(chain.links) != 1:
        return False
    parent, _, a = chain.dw_path.rpartition(".")
    parent_b, _, b = chain.links[0][0].rpartition(".")
    seq = root.get_submodule(parent)
    if parent != parent_b or type(seq) not in (nn.Sequential, FusedSequential):
        return False
    names = list(seq._modules)
    return names.index(b) == names.index(a) + 1


def _convert_chains(module: nn.Module, prefix: str, report: List[Replacement]) -> bool:
    """Fuse the proven chains found in ``module``'s traced forward; False if it does not trace
    (its children are tried one by one)."""
    chains = _traced_chains(module)
    if chains is None:
        return False
    for chain in chains:
        where = _join(prefix, chain.dw_path)
        names = "+".join(type(m).__name__ for m in chain.modules())
        if not chain.fusable:
            if chain.stop == _NOTHING_FOLLOWS:  # a lone depthwise conv: swapped below
                continue
            report.append(Replacement(where, names, "", f"not fused with what follows "
                                      f"({chain.stop}); converted alone"))
            continue
        if _plain_sequential_pair(chain, module):
            continue
        why = _prove_chain(chain)
        if why is not None:
            report.append(Replacement(where, names, "", f"not fused: {why}"))
            continue
        head, slots = _chain_head(chain, where)
        fused = [f"{r}={type(m).__name__}" + (f"({a})" if a else "")
                 for _, m, r, a in chain.links if r != "identity"]
        batch_norms = any(isinstance(m, _NORM) for m in chain.modules())
        mode = ("one fused launch in eval mode; in training the batch norms run eagerly "
                "between the Triton stages" if batch_norms else "one fused launch")
        if any(isinstance(m, nn.LayerNorm) for m in chain.modules()):
            mode += (f" (the layer norm fuses while {chain.dw.out_channels} channels fit one "
                     f"program: launchers.dsd_mid_norm_fits)")
        report.append(Replacement(where, names, "SeparableChain",
                                  f"fused ({', '.join(fused)}; {mode}); proven equal on a "
                                  f"random input, train and eval"))
        _set_path(module, chain.dw_path, head)
        for path, slot in slots:
            _set_path(module, path, slot)
            parent = module.get_submodule(path.rpartition(".")[0])
            head._homes[slot] = (parent, path.rpartition(".")[2])
            if type(parent) is nn.Sequential:  # a slice must not cut the chain
                parent.__class__ = ChainSequential
            report.append(Replacement(_join(prefix, path), type(slot.original).__name__,
                                      "Bypassed", f"computed by the fused chain at {where}"))
    return True


def _convert(module: nn.Module, prefix: str, report: List[Replacement],
             traced: bool = False) -> nn.Module:
    if isinstance(module, (M._Separable, M.DepthwiseConv1d, M.DepthwiseConv2d,
                           M.PointwiseConv1d, M.PointwiseConv2d, M.SeparableChain, M.Bypassed)):
        return module
    name = type(module).__name__
    if type(module) in (M.EagerDepthwiseSeparableDilatedConv1d,
                        M.EagerDepthwiseSeparableDilatedConv2d):
        why = next((w for w in map(_why_not_swappable, (module.depthwise, module.pointwise)) if w),
                   None)
        if why is None and not any(_has_hooks(m) for m in module.children()):
            new = _separable_from(module.depthwise, module.pointwise,
                                  "causal" if module.causal else None)
            report.append(Replacement(prefix, name, type(new).__name__))
            return _carry_hooks(module, new)
        report.append(Replacement(prefix, name, "", why or "hooks on its convs: its convs are "
                                  "converted one by one, not fused"))
    elif set(module._modules) == {"depthwise", "pointwise"} and \
            not isinstance(module, nn.Sequential):
        dw, pw = module.depthwise, module.pointwise
        if (_depthwise_like(dw) and _why_not_swappable(dw) is None and pw is not None
                and _is_pointwise(pw, dw.out_channels, _dims(dw))
                and _why_not_swappable(pw) is None):
            if any(_has_hooks(m) for m in module.children()):
                why = "hooks on its convs: converted one by one, not fused"
            elif next(module.parameters(recurse=False), None) is not None or \
                    next(module.buffers(recurse=False), None) is not None:
                why = "it holds parameters or buffers of its own, which its forward may use"
            else:
                why = _prove(module, lambda m: _separable_from(m.depthwise, m.pointwise), dw)
            if why is None:
                new = _separable_from(dw, pw)
                report.append(Replacement(prefix, name, type(new).__name__,
                                          "proven equal on a random input, train and eval"))
                return _carry_hooks(module, new)
            report.append(Replacement(prefix, name, "", f"not fused: {why}"))
    if _depthwise_like(module):
        why = _why_not_swappable(module)
        if why is not None and _same_padding_candidate(module):
            same = _prove(module, lambda m: _depthwise_from(m, "tf_same"), module, sizes=2)
            if same is None:
                new = _depthwise_from(module, "tf_same")
                report.append(Replacement(prefix, name, type(new).__name__,
                                          "TensorFlow 'SAME' padding (padding='tf_same'), "
                                          "proven equal on two input sizes"))
                return new
        if why is not None:
            report.append(Replacement(prefix, name, "", why))
            return module
        new = _depthwise_from(module)
        report.append(Replacement(prefix, name, type(new).__name__,
                                  "hooks carried over" if _has_hooks(module) else ""))
        return new
    if _grayscale_stem(module):
        report.append(Replacement(prefix, name, "", "a dense conv with one input channel (a "
                                  "grayscale stem) stays dense (see convert's docs)"))
        return module
    if not traced:  # chains through its forward (one trace covers every module below)
        traced = _convert_chains(module, prefix, report)
    if type(module) in (nn.Sequential, FusedSequential):  # pairs, while still eager
        module = _convert_sequential(module, prefix, report)
    for child_name in list(module._modules):
        child = module._modules[child_name]
        if child is not None:
            module._modules[child_name] = _convert(child, _join(prefix, child_name), report,
                                                   traced)
    return module


def _deepcopy(model: nn.Module) -> nn.Module:
    """copy.deepcopy, also for models holding non-leaf tensors as plain attributes (pruning
    keeps ``weight = weight_orig * weight_mask`` so; deepcopy refuses those): they are copied
    detached, and recomputed by their hooks at the next forward as in the original."""
    memo = {}
    for m in model.modules():
        for v in vars(m).values():
            if isinstance(v, Tensor) and not v.is_leaf:
                memo[id(v)] = v.detach().clone()
    return copy.deepcopy(model, memo)


def _apply(what: str, walk, model: nn.Module, inplace: bool, verbose: bool,
           return_report: bool):
    """Shared driver of convert / to_eager: copy, walk, log the report."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"triton_dsd.{what}: `model` must be an nn.Module; got {type(model).__name__}")
    model = model if inplace else _deepcopy(model)
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

    inplace=False converts a deep copy. Every decision is logged on the ``triton_dsd`` logger
    (and printed with verbose=True); return_report=True also returns the list of
    :class:`Replacement` lines (``r.replaced`` is False for a module left alone, ``r.note`` says
    why).
    """
    return _apply("convert", _convert, model, inplace, verbose, return_report)


def _eager_conv(new: nn.Module) -> Conv:
    conv = nn.Conv1d if isinstance(new, nn.Conv1d) else nn.Conv2d
    padding = 0 if new.padding == "causal" else new.padding
    old = conv(new.in_channels, new.out_channels, new.kernel_size, new.stride, padding,
               new.dilation, new.groups, new.bias is not None, new.padding_mode,
               device="meta", dtype=new.weight.dtype)
    old.weight, old.bias = new.weight, new.bias
    return _carry_hooks(new, old)


def _why_not_eager(m: nn.Module, in_separable: bool = False) -> Optional[str]:
    """None if our drop-in ``m`` can become a plain nn.Conv with nothing lost, else why not."""
    if type(m) not in _OURS:
        return f"{type(m).__name__} is not one of our convs (a wrapper or a replacement)"
    if not isinstance(m.weight, nn.Parameter) or (m.bias is not None
                                                  and not isinstance(m.bias, nn.Parameter)):
        return "its weight is not a Parameter (pruning or spectral_norm recompute it)"
    if m._modules or m._buffers:
        return "it holds child modules or buffers an nn.Conv would lose"
    if m.padding == "causal" and not in_separable:
        return "causal padding has no nn.Conv1d equivalent"
    return None


def _to_eager(module: nn.Module, prefix: str, report: List[Replacement]) -> nn.Module:
    name = type(module).__name__
    if isinstance(module, (M.SeparableChain, M.Bypassed)):  # the original module, as it was
        orig = module.conv if isinstance(module, M.SeparableChain) else module.original
        report.append(Replacement(prefix, name, type(orig).__name__))
        return _carry_hooks(module, orig)
    if isinstance(module, M._Separable):
        dw, pw = module.depthwise, module.pointwise
        why = _why_not_eager(dw, True) or _why_not_eager(pw, True)
        if why is None:
            dims = 1 if isinstance(dw, nn.Conv1d) else 2
            cls = (M.EagerDepthwiseSeparableDilatedConv1d if dims == 1
                   else M.EagerDepthwiseSeparableDilatedConv2d)
            new = cls(dw.in_channels, pw.out_channels, dw.kernel_size, dw.dilation, dw.padding,
                      stride=dw.stride, bias=dw.bias is not None,
                      depth_multiplier=dw.out_channels // dw.in_channels,
                      padding_mode=dw.padding_mode, device="meta", dtype=dw.weight.dtype)
            new.depthwise = _eager_conv(dw)
            new.pointwise = _eager_conv(pw)
            report.append(Replacement(prefix, name, type(new).__name__))
            return _carry_hooks(module, new)
        report.append(Replacement(prefix, name, "", f"left on Triton: {why}"))
        return module
    if isinstance(module, _OURS):
        why = _why_not_eager(module)
        if why is not None:
            report.append(Replacement(prefix, name, "", f"left on Triton: {why}"))
            return module
        new = _eager_conv(module)
        report.append(Replacement(prefix, name, type(new).__name__))
        return new
    for child in list(module._modules):
        sub = module._modules[child]
        if sub is not None:
            module._modules[child] = _to_eager(sub, _join(prefix, child), report)
    if isinstance(module, FusedSequential):
        new = nn.Sequential()
        new._modules = module._modules
        report.append(Replacement(prefix, name, "Sequential"))
        return _carry_hooks(module, new)
    if type(module) is ChainSequential and not any(
            isinstance(m, (M.SeparableChain, M.Bypassed)) for m in module.modules()):
        module.__class__ = nn.Sequential
    return module


def to_eager(model: nn.Module, *, inplace: bool = False, verbose: bool = False,
             return_report: bool = False) -> Union[nn.Module, Tuple[nn.Module, List[Replacement]]]:
    """Undo :func:`convert`: Triton layers back to plain nn.Conv layers / the eager class."""
    return _apply("to_eager", _to_eager, model, inplace, verbose, return_report)
