"""Packed variable-length batches (``cu_seqlens``): B sequences laid end to end in x (1, C, T)
are convolved each on its own.

The specification, as tested here:
- no tap crosses a sequence boundary; the padding ('causal', 'same', 'tf_same', int, 'valid')
  applies at each sequence's own ends; any stride; sequence i's output is frames
  [cu_out[i], cu_out[i+1]) with cu_out = conv1d_out_cu_seqlens(...);
- the forward and every gradient (x, dw_weight, dw_bias, pw_weight, pw_bias, the epilogue
  scales and shifts) equal (a) our own op run on each sequence alone and (b) eager PyTorch in
  float64 per sequence (F.conv1d on the explicitly padded sequence);
- it is ONE launch of the ordinary forward kernel for the whole pack (fused: dsd_fwd;
  unfused: depthwise_fwd + pointwise_fwd);
- length-1 sequences, sequences shorter than the receptive field (causal/same), empty
  sequences, odd channel counts, channel-last inputs, unbatched (C, T) inputs;
- bad offsets are refused before any launch, with the argument named;
- the layers take ``cu_seqlens`` too, under torch.compile(fullgraph=True) as well.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import triton_dsd
from triton_dsd import _runtime, epilogue, shapes
from triton_dsd.testing import assert_close, reference

from helpers import DEVICE, case_id, pairwise, ran, valid_geometry, with_layout

PADDINGS = ["causal", "same", "tf_same", 0, 1, 3, "valid"]


def _lengths(K, d, s, padding, rot):
    """Sequence lengths for a case: for causal/same/tf_same a length-1 sequence, one shorter
    than the receptive field, an empty one and a longer one; for int/valid padding the
    shortest length with a non-empty output and a few more (and an empty one)."""
    rf = d * (K - 1) + 1
    if padding in ("causal", "same", "tf_same"):
        lens = [1, max(1, rf - 1), 0, 7]
    else:
        p = 0 if padding == "valid" else padding
        lmin = max(1, rf - 2 * p)
        lens = [lmin, lmin + 1, 0] + ([lmin + 3] if lmin <= 4 else [])
    rot %= len(lens)
    return lens[rot:] + lens[:rot]


def _cu(lens, dtype=torch.int32):
    return torch.tensor([0] + list(torch.tensor(lens).cumsum(0).tolist()), dtype=dtype,
                        device=DEVICE)


def _pads(L, K, s, d, padding):
    if padding == "tf_same":
        return shapes.tf_same_pads([L], [K], [s], [d])
    return shapes.resolve_padding(padding, (K,), (s,), (d,))


def _eager_seq(xi, wd, bd, wp, bp, K, s, d, padding, dtype, epi=None):
    """One sequence, eagerly in float64: pad explicitly, F.conv1d, the epilogues, F.conv1d
    (z rounded to ``dtype`` between the stages, as eager stores it)."""
    lo, hi = _pads(xi.shape[-1], K, s, d, padding)
    z = F.conv1d(F.pad(xi, (lo, hi)), wd, bd, s, 0, d, groups=xi.shape[1])
    epi = epi or {}
    if epi.get("mid_norm"):
        z = F.layer_norm(z.transpose(1, 2), (z.shape[1],), eps=1e-5).transpose(1, 2)
    z = epilogue.apply(z, epi.get("mid_scale"), epi.get("mid_shift"),
                       epilogue.act_code("t", "a", epi.get("mid_act")))
    z = z.to(dtype).to(torch.float64)
    y = F.conv1d(z, wp, bp)
    return epilogue.apply(y, epi.get("out_scale"), epi.get("out_shift"),
                          epilogue.act_code("t", "a", epi.get("out_act")))


def _per_sequence(fn, x, cu):
    """Run ``fn`` on each non-empty sequence of the pack x (1, C, T) and concatenate."""
    bounds = cu.tolist()
    outs = [fn(x[..., a:b]) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    return torch.cat(outs, dim=-1)


def _grads(y, dy, leaves):
    y.backward(dy.to(y.device, y.dtype))
    return [None if t is None else t.grad for t in leaves]


def _make(C, m, M, K, T, dtype, layout, biases=(True, True), seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(DEVICE, dtype)  # noqa: E731
    x = with_layout(r(1, C, T), layout)
    params = [r(C * m, 1, K), r(C * m) if biases[0] else None, r(M, C * m, 1),
              r(M) if biases[1] else None]
    return x, params


def _leaf(t):
    return None if t is None else t.detach().clone().requires_grad_()


# ----------------------------------------------------------------------------- the layer op
CASES = pairwise(dict(padding=PADDINGS, K=[2, 3, 4, 7], dilation=[1, 2, 4], stride=[1, 2],
                      fused=[True, False], layout=["ncl", "cl"],
                      dtype=[torch.float32, torch.float64], C=[5, 4], m=[1, 2]),
                 valid=valid_geometry, seed=3)
for _i, _c in enumerate(CASES):  # half the cases also run our op sequence by sequence
    _c["vs_ours"] = _i % 2 == 0


@pytest.mark.parametrize("c", CASES, ids=[case_id(c) for c in CASES])
def test_packed_dsd_equals_each_sequence_alone(c):
    K, d, s, padding, dtype = c["K"], c["dilation"], c["stride"], c["padding"], c["dtype"]
    C, m, M = c["C"], c["m"], 3
    lens = _lengths(K, d, s, padding, rot=K + d)
    cu = _cu(lens, torch.int64 if K % 2 else torch.int32)
    x, params = _make(C, m, M, K, sum(lens), dtype, c["layout"], biases=(K != 4, d != 2))
    x, params = _leaf(x), [_leaf(p) for p in params]
    kw = dict(stride=s, padding=padding, dilation=d, fused=c["fused"])

    _runtime.LAUNCHES.clear()
    y = triton_dsd.dsd_conv1d(x, *params, **kw, cu_seqlens=cu)
    if c["fused"]:
        assert dict(_runtime.LAUNCHES) == {"dsd_fwd_kernel": 1}, dict(_runtime.LAUNCHES)
    else:
        assert dict(_runtime.LAUNCHES) == {"depthwise_fwd_kernel": 1,
                                           "pointwise_fwd_kernel": 1}, dict(_runtime.LAUNCHES)
    cu_out = triton_dsd.conv1d_out_cu_seqlens(cu, K, s, padding, d)
    assert cu_out.dtype == cu.dtype and y.shape == (1, M, int(cu_out[-1]))
    if s == 1 and padding in ("same", "causal", "tf_same"):
        assert torch.equal(cu_out, cu)
    if c["layout"] == "cl":  # channel-last in, channel-last out (as without cu_seqlens)
        assert y.stride(1) == 1, y.stride()

    # (b) eager float64, sequence by sequence
    xr, pr = reference(x), [reference(p) for p in params]
    yr = _per_sequence(lambda xi: _eager_seq(xi, *pr, K, s, d, padding, dtype), xr, cu)
    outs = [_eager_seq(xr[..., a:b], *pr, K, s, d, padding, dtype).shape[-1]
            for a, b in zip(cu.tolist()[:-1], cu.tolist()[1:]) if b > a]
    assert (cu_out.diff()[torch.tensor(lens) > 0]).tolist() == outs
    g = torch.Generator().manual_seed(1)
    dy = torch.randn(yr.shape, generator=g, dtype=torch.float64).to(dtype)
    tol = dict(y=C * m * K, dx=M * K * m, w=sum(lens) * M)
    assert_close(y, yr, dtype, tol["y"], "y")
    got = _grads(y, dy, [x, *params])
    want = _grads(yr, dy, [xr, *pr])
    names = ("dx", "dw_weight", "dw_bias", "pw_weight", "pw_bias")
    for name, a, b in zip(names, got, want):
        if a is not None:
            assert_close(a, b, dtype, tol["dx"] if name == "dx" else tol["w"], name)
    assert ran("depthwise_bwd_input_kernel", "depthwise_bwd_weight_kernel",
               "pointwise_bwd_weight_kernel")

    if not c["vs_ours"]:
        return
    # (a) our own op on each sequence alone
    x2, p2 = _leaf(x), [_leaf(p) for p in params]
    y2 = _per_sequence(lambda xi: triton_dsd.dsd_conv1d(xi, *p2, **kw), x2, cu)
    assert_close(y, y2.double(), dtype, tol["y"], "y vs per-sequence")
    for name, a, b in zip(names, got, _grads(y2, dy, [x2, *p2])):
        if a is not None:
            assert_close(a, b.double(), dtype, tol["dx"] if name == "dx" else tol["w"],
                         name + " vs per-sequence")


DW_CASES = pairwise(dict(padding=PADDINGS, K=[2, 3, 7], dilation=[1, 2, 4], stride=[1, 2],
                         layout=["ncl", "cl"], unbatched=[False, True]),
                    valid=valid_geometry, seed=5)


@pytest.mark.parametrize("c", DW_CASES, ids=[case_id(c) for c in DW_CASES])
def test_packed_depthwise_equals_eager_per_sequence(c):
    K, d, s, padding = c["K"], c["dilation"], c["stride"], c["padding"]
    C, m = 5, 2
    lens = _lengths(K, d, s, padding, rot=K)
    cu = _cu(lens)
    x, (w, b, _, _) = _make(C, m, 1, K, sum(lens), torch.float64, c["layout"])
    x, w, b = _leaf(x), _leaf(w), _leaf(b)
    xin = x[0] if c["unbatched"] else x
    _runtime.LAUNCHES.clear()
    y = triton_dsd.depthwise_conv1d(xin, w, b, s, padding, d, cu_seqlens=cu)
    assert dict(_runtime.LAUNCHES) == {"depthwise_fwd_kernel": 1}, dict(_runtime.LAUNCHES)
    if c["unbatched"]:
        assert y.dim() == 2
        y = y.unsqueeze(0)

    def eager(xi):
        lo, hi = _pads(xi.shape[-1], K, s, d, padding)
        return F.conv1d(F.pad(xi, (lo, hi)), wr, br, s, 0, d, groups=C)

    xr, wr, br = reference(x), reference(w), reference(b)
    yr = _per_sequence(eager, xr, cu)
    assert_close(y, yr, torch.float64, K, "y")
    dy = torch.randn(yr.shape, dtype=torch.float64)
    for name, a, e in zip(("dx", "dw", "db"), _grads(y, dy, [x, w, b]),
                          _grads(yr, dy, [xr, wr, br])):
        assert_close(a, e, torch.float64, sum(lens), name)


# ----------------------------------------------------------------------------- epilogues
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("mid_norm", [None, "layer_norm"])
def test_epilogues_and_their_gradients_with_packed_sequences(fused, mid_norm):
    K, d, s, padding, C, M = 3, 2, 1, "same", 5, 4
    lens = [1, 4, 0, 9]
    cu = _cu(lens)
    x, params = _make(C, 1, M, K, sum(lens), torch.float64, "ncl", seed=7)
    g = torch.Generator().manual_seed(8)
    vec = lambda n: torch.randn(n, generator=g, dtype=torch.float64).to(DEVICE)  # noqa: E731
    epi = dict(mid_scale=vec(C).abs() + 0.5, mid_shift=vec(C), mid_act="silu",
               out_scale=vec(M), out_shift=vec(M), out_act="gelu_tanh", mid_norm=mid_norm)
    leaves = [_leaf(x)] + [_leaf(p) for p in params]
    eleaves = {k: _leaf(v) if isinstance(v, torch.Tensor) else v for k, v in epi.items()}
    _runtime.LAUNCHES.clear()
    y = triton_dsd.dsd_conv1d(*leaves, s, padding, d, fused=fused, cu_seqlens=cu, **eleaves)
    assert _runtime.LAUNCHES["dsd_fwd_kernel" if fused else "depthwise_fwd_kernel"] == 1

    rleaves = [reference(t) for t in leaves]
    repi = {k: reference(v) if isinstance(v, torch.Tensor) else v for k, v in eleaves.items()}
    yr = _per_sequence(lambda xi: _eager_seq(xi, *rleaves[1:], K, s, d, padding,
                                             torch.float64, repi), rleaves[0], cu)
    assert_close(y, yr, torch.float64, 20, "y")
    # our op, sequence by sequence, with the same epilogue
    oleaves = [_leaf(t) for t in leaves]
    oepi = {k: _leaf(v) if isinstance(v, torch.Tensor) else v for k, v in eleaves.items()}
    yo = _per_sequence(lambda xi: triton_dsd.dsd_conv1d(xi, *oleaves[1:], s, padding, d,
                                                        fused=fused, **oepi),
                       oleaves[0], cu)
    assert_close(y, yo, torch.float64, 20, "y vs per-sequence")
    dy = torch.randn(yr.shape, dtype=torch.float64)
    keys = [k for k, v in eleaves.items() if isinstance(v, torch.Tensor)]
    got = _grads(y, dy, leaves + [eleaves[k] for k in keys])
    want = _grads(yr, dy, rleaves + [repi[k] for k in keys])
    mine = _grads(yo, dy, oleaves + [oepi[k] for k in keys])
    names = ["dx", "dw_weight", "dw_bias", "pw_weight", "pw_bias"] + keys
    for name, a, e, o in zip(names, got, want, mine):
        assert a is not None, name
        assert_close(a, e, torch.float64, 200, name)
        assert_close(a, o, torch.float64, 200, name + " vs per-sequence")


# ----------------------------------------------------------------------------- low precision
@pytest.mark.parametrize("dtype, padding, fused", [(torch.float16, "causal", True),
                                                   (torch.bfloat16, "same", False),
                                                   (torch.bfloat16, 1, True)])
def test_half_precision_packed(dtype, padding, fused):
    K, d, s, C, M = 4, 2, 1, 5, 4
    lens = _lengths(K, d, s, padding, rot=1)
    cu = _cu(lens)
    x, params = _make(C, 1, M, K, sum(lens), dtype, "cl")
    leaves = [_leaf(x)] + [_leaf(p) for p in params]
    y = triton_dsd.dsd_conv1d(*leaves, s, padding, d, fused=fused, cu_seqlens=cu)
    rl = [reference(t) for t in leaves]
    yr = _per_sequence(lambda xi: _eager_seq(xi, *rl[1:], K, s, d, padding, dtype), rl[0], cu)
    assert_close(y, yr, dtype, C * K, "y")
    dy = torch.randn(yr.shape, dtype=torch.float64).to(dtype)
    for name, a, e in zip(("dx", "dw_weight", "dw_bias", "pw_weight", "pw_bias"),
                          _grads(y, dy, leaves), _grads(yr, dy.double(), rl)):
        assert_close(a, e, dtype, sum(lens) * M, name)


# ----------------------------------------------------------------------------- the boundaries
def test_boundaries_matter_a_plain_call_on_the_pack_differs():
    """The packed result is not what a plain call on the concatenation gives: the taps of a
    sequence's first frames would otherwise read the previous sequence's last frames."""
    K, d, C, M = 3, 2, 4, 3
    lens = [5, 6, 4]
    cu = _cu(lens)
    x, params = _make(C, 1, M, K, sum(lens), torch.float64, "ncl")
    packed = triton_dsd.dsd_conv1d(x, *params, 1, "causal", d, cu_seqlens=cu)
    plain = triton_dsd.dsd_conv1d(x, *params, 1, "causal", d)
    assert packed.shape == plain.shape
    differs = (packed - plain).abs().amax(dim=1)[0] > 1e-9
    # exactly the frames whose receptive field reaches back past their sequence's start
    starts = cu[:-1].tolist()
    expect = torch.zeros(sum(lens), dtype=torch.bool)
    for a in starts[1:]:
        expect[a:a + d * (K - 1)] = True
    assert torch.equal(differs.cpu(), expect)


def test_one_sequence_is_the_plain_call_and_offsets_dtype_does_not_matter():
    K, C, M = 3, 5, 2
    x, params = _make(C, 1, M, K, 11, torch.float64, "ncl")
    plain = triton_dsd.dsd_conv1d(x, *params, 2, 1, 2)
    for dt in (torch.int32, torch.int64):
        got = triton_dsd.dsd_conv1d(x, *params, 2, 1, 2, cu_seqlens=_cu([11], dt))
        assert_close(got, plain, torch.float64, 10)


def test_deterministic_gradients_are_bitwise_repeatable():
    K, d, C, M = 3, 1, 4, 3
    cu = _cu([3, 1, 8])
    x, params = _make(C, 1, M, K, 12, torch.float32, "ncl")
    runs = []
    for _ in range(2):
        leaves = [_leaf(x)] + [_leaf(p) for p in params]
        y = triton_dsd.dsd_conv1d(*leaves, 2, 1, d, cu_seqlens=cu, deterministic=True)
        runs.append([y.detach()] + _grads(y, torch.ones_like(y), leaves))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_conv1d_out_cu_seqlens():
    cu = torch.tensor([0, 1, 4, 4, 11], dtype=torch.int32, device=DEVICE)
    f = triton_dsd.conv1d_out_cu_seqlens
    assert torch.equal(f(cu, 7, 1, "causal", 4), cu)
    assert torch.equal(f(cu, 7, 1, "same", 2), cu)
    # (L + 2p - d(K-1) - 1) // s + 1 per sequence, 0 for the empty one
    assert f(cu, 3, 2, 1, 1).tolist() == [0, 1, 3, 3, 7]
    assert f(cu, 2, 2, "tf_same", 1).tolist() == [0, 1, 3, 3, 7]  # ceil(L / 2)
    assert f(cu.long(), 1, 1, "valid", 1).tolist() == cu.tolist()
    with pytest.raises(ValueError, match=r"sequence 0 .* has length 1"):
        f(cu, 3, 1, "valid", 1)


# ----------------------------------------------------------------------------- bad input
def _bad_cases():
    x = torch.randn(1, 3, 10, device=DEVICE)
    ok = _cu([4, 6])
    return [
        ("not a tensor", x, [0, 4, 10], {}, TypeError, "`cu_seqlens` must be a 1D int32/int64"),
        ("float", x, ok.float(), {}, TypeError, "`cu_seqlens` must be an int32 or int64"),
        ("2D", x, ok[None], {}, ValueError, "`cu_seqlens` must be a 1D tensor"),
        ("one offset", x, ok[:1], {}, ValueError, "`cu_seqlens` must be a 1D tensor"),
        ("other device", x, ok.to("meta"), {}, ValueError, "`cu_seqlens` is on meta"),
        ("not from 0", x, _cu([4, 6]) + 1, {}, ValueError, "`cu_seqlens` must start at 0"),
        ("decreasing", x, torch.tensor([0, 6, 4, 10], device=DEVICE), {}, ValueError,
         r"non-decreasing .*cu_seqlens\[2\] = 4 < cu_seqlens\[1\] = 6"),
        ("last != T", x, _cu([4, 5]), {}, ValueError, r"`cu_seqlens\[-1\]` must be .* T = 10"),
        ("batch 2", torch.randn(2, 3, 10, device=DEVICE), ok, {}, ValueError,
         r"`x` must be \(1, C, T\)"),
        ("empty output (valid)", x, _cu([2, 8]), dict(padding="valid", dilation=2),
         ValueError, r"sequence 0 of `cu_seqlens` \(frames \[0, 2\)\) has length 2"),
        ("empty output (int)", x, _cu([8, 1, 1]), dict(padding=1, dilation=3), ValueError,
         r"sequence 1 of `cu_seqlens` .* has length 1, padded to 3"),
        ("streaming", x, ok, dict(padding="causal", return_final_state=True),
         NotImplementedError, "`cu_seqlens` cannot be combined with `initial_state`"),
        ("streaming with a state", x, ok,
         dict(padding="causal", initial_state=torch.zeros(1, 3, 2, device=DEVICE)),
         NotImplementedError, "stream each sequence on its own"),
        ("causal stride 2", x, ok, dict(padding="causal", stride=2), ValueError, "`padding`"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0] if isinstance(c, tuple) else "")
def test_bad_offsets_are_refused_before_any_launch(case):
    _, x, cu, kw, exc, match = case
    wd, wp = torch.randn(3, 1, 3, device=DEVICE), torch.randn(2, 3, 1, device=DEVICE)
    _runtime.LAUNCHES.clear()
    with pytest.raises(exc, match=match):
        triton_dsd.dsd_conv1d(x, wd, None, wp, None, cu_seqlens=cu, **kw)
    with pytest.raises(exc, match=match):
        triton_dsd.depthwise_conv1d(x, wd, None, cu_seqlens=cu, **kw)
    assert not any(_runtime.LAUNCHES.values())


def test_layers_refuse_what_they_cannot_pack():
    x, cu = torch.randn(1, 3, 10, device=DEVICE), _cu([4, 6])
    layer = triton_dsd.DepthwiseSeparableDilatedConv1d(3, 4, 3, 1, "same",
                                                       padding_mode="reflect").to(DEVICE)
    _runtime.LAUNCHES.clear()
    with pytest.raises(ValueError, match="`padding_mode`='reflect' is not supported"):
        layer(x, cu_seqlens=cu)
    layer2d = triton_dsd.DepthwiseSeparableDilatedConv2d(3, 4, 3).to(DEVICE)
    with pytest.raises(ValueError, match="`cu_seqlens` packs 1D sequences"):
        layer2d(torch.randn(1, 3, 5, 5, device=DEVICE), cu_seqlens=cu)
    causal = triton_dsd.DepthwiseSeparableDilatedConv1d(3, 4, 3, 1, "causal").to(DEVICE)
    with pytest.raises(NotImplementedError, match="`cu_seqlens` cannot be combined"):
        causal(x, cu_seqlens=cu, return_final_state=True)
    assert not any(_runtime.LAUNCHES.values())


# ----------------------------------------------------------------------------- the layers
@pytest.mark.parametrize("fused", [True, False])
def test_layers_take_cu_seqlens(fused):
    torch.manual_seed(0)
    C, M, K, d = 5, 4, 3, 2
    layer = triton_dsd.DepthwiseSeparableDilatedConv1d(C, M, K, d, "causal", fused=fused,
                                                       depth_multiplier=2)
    layer = layer.double().to(DEVICE)
    eager = triton_dsd.EagerDepthwiseSeparableDilatedConv1d(C, M, K, d, "causal",
                                                            depth_multiplier=2)
    eager = eager.double().to(DEVICE)
    eager.load_state_dict(layer.state_dict())
    cu = _cu([2, 7, 1])
    x = torch.randn(C, 10, dtype=torch.float64, device=DEVICE)  # unbatched (C, T)
    seen = []
    layer.pointwise.register_forward_hook(lambda mod, i, o: seen.append(o.shape))
    _runtime.LAUNCHES.clear()
    y = layer(x, cu_seqlens=cu)
    assert layer.fuses() is False  # the hook: through the children
    assert seen == [y.shape] and _runtime.LAUNCHES["depthwise_fwd_kernel"] == 1
    want = _per_sequence(lambda xi: eager(xi), x[None], cu)[0]
    assert_close(y, want, torch.float64, 30)
    y.sum().backward()
    got = [p.grad.clone() for p in layer.parameters()]
    want.sum().backward()
    for a, p in zip(got, eager.parameters()):
        assert_close(a, p.grad, torch.float64, 100)

    dw = triton_dsd.DepthwiseConv1d(C, 2 * C, K, dilation=d, padding="causal")
    dw = dw.double().to(DEVICE)
    assert_close(dw(x, cu_seqlens=cu), _per_sequence(dw, x[None], cu)[0], torch.float64, K)


def test_fused_layer_with_cu_seqlens_is_one_launch():
    layer = triton_dsd.DepthwiseSeparableDilatedConv1d(4, 4, 3, 1, "same").to(DEVICE)
    cu = _cu([3, 1, 6])
    x = torch.randn(1, 4, 10, device=DEVICE)
    _runtime.LAUNCHES.clear()
    y = layer(x, cu_seqlens=cu)
    assert dict(_runtime.LAUNCHES) == {"dsd_fwd_kernel": 1}
    assert_close(y, _per_sequence(layer, x, cu).double(), torch.float32, 20)


def test_torch_compile_fullgraph_packed_layer():
    torch.manual_seed(0)
    layer = triton_dsd.DepthwiseSeparableDilatedConv1d(4, 4, 3, 2, "causal").to(DEVICE)
    x = torch.randn(1, 4, 12, device=DEVICE)
    cu = _cu([5, 1, 6])
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True,
                             backend="inductor" if DEVICE == "cuda" else "aot_eager")
    xc = x.clone().requires_grad_()
    y = compiled(xc, cu_seqlens=cu)
    y.sum().backward()
    xe = x.clone().requires_grad_()
    want = layer(xe, cu_seqlens=cu)
    want.sum().backward()
    assert_close(y, want.double(), torch.float32, 12)
    assert_close(xc.grad, xe.grad.double(), torch.float32, 12)
    assert ran("dsd_fwd_kernel")
