"""The fused layer's epilogues through the public API: act_out((act_mid(dw(x) * s1 + t1) @ pw
+ b) * s2 + t2), forward and every gradient (x, both weights, both biases, both scales, both
shifts) against eager PyTorch autograd in float64, fused and unfused, the layouts, 1D and 2D;
an eval batch norm folded; bad epilogue arguments refused before any launch."""
import copy

import pytest
import torch
import torch.nn.functional as F

import triton_dsd
from triton_dsd import _runtime, epilogue
from triton_dsd.testing import assert_close

from helpers import DEVICE, with_layout

ACTS = list(epilogue.ACTIVATIONS)
# every activation on each side, paired with another; layouts, dims, fused/unfused spread over
CASES = [
    # (mid_act, out_act, mid affine, out affine, dim, layout, fused, C, M, K, dilation)
    ("relu6", "identity", True, True, 2, "cl", True, 4, 6, 3, 1),
    ("silu", "silu", True, False, 2, "nchw", True, 5, 7, 3, 2),
    ("gelu", "relu", False, True, 2, "cl", True, 8, 4, 5, 1),
    ("gelu_tanh", "hardswish", True, True, 1, "nchw", True, 6, 5, 4, 2),
    ("hardswish", "gelu_tanh", True, True, 1, "cl", True, 4, 4, 3, 1),
    ("relu", "gelu", True, True, 2, "cl", False, 4, 6, 3, 1),
    ("identity", "relu6", True, True, 2, "slice", True, 4, 6, 3, 1),
]


def _reference(x, wd, bd, wp, bp, s1, t1, a1, s2, t2, a2, padding, dilation, dim):
    conv = F.conv2d if dim == 2 else F.conv1d
    z = conv(x, wd, bd, 1, padding, dilation, groups=x.shape[1])
    z = epilogue.apply(z, s1, t1, epilogue.ACTIVATIONS[a1])
    y = conv(z, wp, bp)
    return epilogue.apply(y, s2, t2, epilogue.ACTIVATIONS[a2])


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}-{c[4]}d-{c[5]}-{'fused' if c[6] else 'unfused'}"
                                              for c in CASES])
def test_epilogue_forward_and_every_gradient_float64(case):
    a1, a2, aff1, aff2, dim, layout, fused, C, M, K, d = case
    g = torch.Generator().manual_seed(0)
    sp = (7, 9) if dim == 2 else (13,)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    x = r(2, C, *sp)
    wd, bd, wp, bp = r(C, 1, *(K,) * dim), r(C), r(M, C, *(1,) * dim), r(M)
    s1, t1 = (r(C), r(C)) if aff1 else (None, None)
    s2, t2 = (r(M), r(M)) if aff2 else (None, None)
    pad = d * (K - 1) // 2
    want = _reference(x, wd, bd, wp, bp, s1, t1, a1, s2, t2, a2, pad, d, dim)
    ins = [t.detach().clone().to(DEVICE).requires_grad_() if t is not None else None
           for t in (x, wd, bd, wp, bp, s1, t1, s2, t2)]
    xin = with_layout(ins[0].detach(), layout).requires_grad_()
    fn = triton_dsd.dsd_conv2d if dim == 2 else triton_dsd.dsd_conv1d
    _runtime.LAUNCHES.clear()
    got = fn(xin, ins[1], ins[2], ins[3], ins[4], 1, pad, d, fused, mid_scale=ins[5],
             mid_shift=ins[6], mid_act=a1, out_scale=ins[7], out_shift=ins[8], out_act=a2)
    assert _runtime.LAUNCHES["dsd_fwd_kernel" if fused else "depthwise_fwd_kernel"] == 1
    assert_close(got, want, torch.float64, K ** dim + C, "y")
    gy = torch.randn(want.shape, generator=g, dtype=torch.float64)
    got.backward(gy.to(DEVICE))
    ref_inputs = [t for t in (x, wd, bd, wp, bp, s1, t1, s2, t2)]
    refs = [t.clone().requires_grad_() if t is not None else None for t in ref_inputs]
    y = _reference(*refs[:7], a1, refs[7], refs[8], a2, pad, d, dim)
    y.backward(gy)
    names = ["x", "dw_weight", "dw_bias", "pw_weight", "pw_bias", "mid_scale", "mid_shift",
             "out_scale", "out_shift"]
    for name, t, ref in zip(names, [xin] + ins[1:], refs):
        if ref is None:
            continue
        assert t.grad is not None, name
        assert_close(t.grad, ref.grad, torch.float64, 10 * (K ** dim + C + M), name)


def test_epilogue_float32_and_eval_batch_norm_fold():
    """dw -> BN -> ReLU6 -> pw -> BN in float32 with the norms folded from their running
    statistics at call time: equal to the eager modules, and gradients reach the norms'
    weight and bias through the fold."""
    torch.manual_seed(0)
    C, M = 6, 5
    bn1, bn2 = torch.nn.BatchNorm2d(C).eval(), torch.nn.BatchNorm2d(M).eval()
    for bn in (bn1, bn2):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.normal_()
        bn.bias.data.normal_()
    x = torch.randn(2, C, 8, 8)
    wd, wp = torch.randn(C, 1, 3, 3), torch.randn(M, C, 1, 1)
    ref = [copy.deepcopy(m).double() for m in (bn1, bn2)]
    want = ref[1](F.conv2d(F.relu6(ref[0](F.conv2d(x.double(), wd.double(), None, 1, 1,
                                                     groups=C))), wp.double()))
    want.sum().backward()
    s1, t1 = epilogue.fold_batch_norm(bn1, torch.float32)
    s2, t2 = epilogue.fold_batch_norm(bn2, torch.float32)
    got = triton_dsd.dsd_conv2d(x.to(DEVICE), wd.to(DEVICE), None, wp.to(DEVICE), None, 1, 1,
                                mid_scale=s1.to(DEVICE), mid_shift=t1.to(DEVICE),
                                mid_act="relu6", out_scale=s2.to(DEVICE),
                                out_shift=t2.to(DEVICE))
    assert_close(got, want, torch.float32, 9 + C, "y")
    got.sum().backward()
    for a, b, name in ((bn1, ref[0], "bn1"), (bn2, ref[1], "bn2")):
        assert_close(a.weight.grad, b.weight.grad, torch.float32, 200, f"{name}.weight")
        assert_close(a.bias.grad, b.bias.grad, torch.float32, 200, f"{name}.bias")


def test_epilogue_under_torch_compile():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 6, 6, device=DEVICE)
    wd, wp = torch.randn(4, 1, 3, 3, device=DEVICE), torch.randn(4, 4, 1, 1, device=DEVICE)
    s, t = torch.rand(4, device=DEVICE) + 0.5, torch.randn(4, device=DEVICE)

    def f(x, wd, wp, s, t):
        return triton_dsd.dsd_conv2d(x, wd, None, wp, None, 1, 1, mid_scale=s, mid_shift=t,
                                     mid_act="silu", out_act="relu")

    eager = f(x, wd, wp, s, t)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(x, wd, wp, s, t)
    assert torch.equal(eager, compiled)


@pytest.mark.parametrize("kwargs, match", [
    (dict(mid_act="tanh"), "`mid_act` must be one of"),
    (dict(out_act=3), "`out_act` must be one of"),
    (dict(mid_scale=torch.ones(3)), r"`mid_scale` must have shape \(4,\)"),
    (dict(out_shift=torch.ones(4, 1)), "`out_shift` must be a 1D tensor"),
    (dict(out_scale=torch.ones(5, dtype=torch.int32)), "`out_scale` must be float16"),
])
def test_bad_epilogue_arguments_are_refused_before_any_launch(kwargs, match):
    x = torch.randn(1, 4, 6, 6, device=DEVICE)
    wd, wp = torch.randn(4, 1, 3, 3, device=DEVICE), torch.randn(5, 4, 1, 1, device=DEVICE)
    kwargs = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    _runtime.LAUNCHES.clear()
    with pytest.raises((ValueError, TypeError), match=match):
        triton_dsd.dsd_conv2d(x, wd, None, wp, None, 1, 1, **kwargs)
    assert not any(_runtime.LAUNCHES.values())


def _ln_reference(x, wd, bd, wp, bp, w, b, eps, act, dim):
    conv = F.conv2d if dim == 2 else F.conv1d
    u = conv(x, wd, bd, 1, wd.shape[-1] // 2, 1, groups=x.shape[1])
    perm = (0, *range(2, 2 + dim), 1)
    inv = (0, dim + 1, *range(1, dim + 1))
    a = F.layer_norm(u.permute(perm), (u.shape[1],), w, b, eps).permute(inv)
    return conv(epilogue.act_forward(a, epilogue.ACTIVATIONS[act]), wp, bp)


@pytest.mark.parametrize("dim, layout, K, C, act", [(2, "cl", 3, 6, "gelu"),
                                                     (2, "nchw", 7, 5, "identity"),
                                                     (1, "cl", 5, 20, "silu")])
def test_layer_norm_between_the_stages_every_gradient(dim, layout, K, C, act):
    """ConvNeXt's dw -> LayerNorm over channels -> 1x1: one launch, and every gradient
    (through the normalisation's mean and variance) equals eager autograd's in float64."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    M = 4
    ref = [r(2, C, *((7, 8) if dim == 2 else (11,))), r(C, 1, *(K,) * dim), r(C),
           r(M, C, *(1,) * dim), r(M), r(C) * 0.5 + 1, r(C)]
    ref = [t.requires_grad_() for t in ref]
    want = _ln_reference(*ref, 1e-6, act, dim)
    gy = torch.randn(want.shape, generator=g, dtype=torch.float64)
    want.backward(gy)
    ins = [t.detach().clone().to(DEVICE).requires_grad_() for t in ref]
    xin = with_layout(ins[0].detach(), layout).requires_grad_()
    fn = triton_dsd.dsd_conv2d if dim == 2 else triton_dsd.dsd_conv1d
    _runtime.LAUNCHES.clear()
    got = fn(xin, *ins[1:5], 1, K // 2, 1, mid_norm="layer_norm", mid_eps=1e-6,
             mid_scale=ins[5], mid_shift=ins[6], mid_act=act)
    assert _runtime.LAUNCHES["dsd_fwd_kernel"] == 1
    assert_close(got, want, torch.float64, K ** dim + C, "y")
    got.backward(gy.to(DEVICE))
    names = ["x", "dw_weight", "dw_bias", "pw_weight", "pw_bias", "ln.weight", "ln.bias"]
    for name, t, w in zip(names, [xin] + ins[1:], ref):
        assert_close(t.grad, w.grad, torch.float64, 10 * (K ** dim + C + M), name)


def test_layer_norm_past_one_program_runs_unfused(monkeypatch):
    """More channels than one program holds: the layer runs unfused (Triton depthwise, the
    norm eagerly, Triton pointwise) and is still right."""
    from triton_dsd import launchers
    monkeypatch.setattr(launchers, "dsd_mid_norm_fits", lambda CM, dtype: False)
    g = torch.Generator().manual_seed(0)
    x, wd, wp = (torch.randn(*s, generator=g, dtype=torch.float64)
                 for s in ((1, 6, 6, 6), (6, 1, 3, 3), (4, 6, 1, 1)))
    want = _ln_reference(x, wd, None, wp, None, None, None, 1e-5, "relu", 2)
    _runtime.LAUNCHES.clear()
    got = triton_dsd.dsd_conv2d(x.to(DEVICE), wd.to(DEVICE), None, wp.to(DEVICE), None, 1, 1,
                                mid_norm="layer_norm", mid_act="relu")
    assert _runtime.LAUNCHES["dsd_fwd_kernel"] == 0
    assert _runtime.LAUNCHES["depthwise_fwd_kernel"] == 1
    assert_close(got, want, torch.float64, 20, "y")


def test_bad_norm_arguments_are_refused():
    x = torch.randn(1, 4, 6, 6, device=DEVICE)
    wd, wp = torch.randn(4, 1, 3, 3, device=DEVICE), torch.randn(5, 4, 1, 1, device=DEVICE)
    with pytest.raises(ValueError, match="`mid_norm` must be one of"):
        triton_dsd.dsd_conv2d(x, wd, None, wp, None, mid_norm="batch_norm")
    with pytest.raises(ValueError, match="`mid_eps` must be a positive number"):
        triton_dsd.dsd_conv2d(x, wd, None, wp, None, mid_norm="layer_norm", mid_eps=0)
