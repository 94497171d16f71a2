"""Decoding a causal 1D separable layer frame by frame: ``step(x_t, state)`` (one launch per
frame for a batch of streams: the tap sum from the conv state, the epilogues, the pointwise
GEMV, the state moved in place) gives the whole sequence's causal output at every frame, from
a zero state or after a chunked prefill; every split of the launch (channel blocks summed
atomically or in order, M splits sharing a state block) agrees; bad input is refused before
any launch."""
import re

import pytest
import torch
import torch.nn.functional as F

import triton_dsd
from triton_dsd import _runtime, cost, launchers, ops
from triton_dsd.epilogue import ACTIVATIONS, Epilogue
from triton_dsd.testing import assert_close

from helpers import DEVICE, TF32, permuted_program_order

#: a GPU's grid: the tests split channel blocks and M blocks as an H200 would
H200_SMS = 132


@pytest.fixture
def gpu_grid(monkeypatch):
    """Size the step's grid for 132 SMs even on the interpreter (else one SM: no M splits)."""
    config = launchers.step_config
    monkeypatch.setattr(launchers, "step_config",
                        lambda N, C, M, sms: config(N, C, M, H200_SMS))


def _weights(C, M, K, dtype, mult=1, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(DEVICE, dtype)  # noqa: E731
    return dict(dw_weight=r(C * mult, 1, K) / K ** 0.5, dw_bias=r(C * mult) if bias else None,
                pw_weight=r(M, C * mult, 1) / (C * mult) ** 0.5, pw_bias=r(M) if bias else None)


def _epilogue_kw(CM, M, on, seed=1):
    if not on:
        return {}
    g = torch.Generator().manual_seed(seed)
    v = lambda n: (torch.rand(n, generator=g) + 0.5).to(DEVICE)  # noqa: E731
    return dict(mid_scale=v(CM), mid_shift=v(CM) - 1, mid_act="silu", out_scale=v(M),
                out_shift=v(M) - 1, out_act="relu")


def _decode(x, state, kw, dilation, **extra):
    ys = [triton_dsd.dsd_conv1d_step(x[..., t], state, dilation=dilation, **kw, **extra)
          for t in range(x.shape[-1])]
    return torch.stack(ys, dim=-1)


@pytest.mark.parametrize("K,d", [(1, 1), (2, 1), (3, 2), (4, 8), (7, 1), (31, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_step_decode_equals_the_whole_sequence(K, d, dtype, gpu_grid):
    """Frame by frame from a zero state == the causal whole-sequence call, at every frame."""
    N, C, M, L = 3, 5, 6, 9
    kw = _weights(C, M, K, dtype, seed=K + d)
    x = torch.randn(N, C, L, generator=torch.Generator().manual_seed(d)).to(DEVICE, dtype)
    with torch.no_grad():
        whole = triton_dsd.dsd_conv1d(x, padding="causal", dilation=d, **kw)
        state = x.new_zeros(N, C, d * (K - 1))
        _runtime.LAUNCHES.clear()
        got = _decode(x, state, kw, d)
    assert _runtime.LAUNCHES == {"dsd_step_kernel": L}  # one launch a frame, nothing else
    assert_close(got, whole.double(), dtype, K + C, "decoded y", tf32=TF32)
    # the state is the last d*(K-1) input frames (zeros before the sequence)
    tail = torch.cat([x.new_zeros(N, C, d * (K - 1)), x], dim=-1)[..., x.shape[-1]:]
    assert torch.equal(state, tail)


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("N,C,M,mult,epi", [
    (1, 40, 70, 1, True),     # one stream: 16-channel blocks summed into y, M split in 2
    (17, 80, 130, 2, False),  # 2 channel blocks of 64 (x2: multiplier 2) channels, 3 M splits
    (2, 300, 20, 1, True),    # 19 channel blocks, one M block
    (2, 40, 20, 3, False),    # multiplier 3 with K - 1 > 16 taps (the tap loop)
])
def test_split_launches_agree_with_the_whole_sequence(N, C, M, mult, epi, deterministic,
                                                      gpu_grid):
    """The grid an H200 gets (several channel blocks meeting in y, M splits sharing a state
    block: the last reader moves it) gives the whole-sequence output, with the epilogues, in
    any program order; the workspace is left zeroed for the next call."""
    K, d, L, dtype = (4 if mult < 3 else 19), 2, 5, torch.float32
    kw = dict(_weights(C, M, K, dtype, mult), **_epilogue_kw(C * mult, M, epi))
    x = torch.randn(N, C, L, generator=torch.Generator().manual_seed(3)).to(DEVICE, dtype)
    cfg = launchers.step_config(N, C, M, H200_SMS)
    with torch.no_grad(), permuted_program_order(seed=N + C):
        whole = triton_dsd.dsd_conv1d(x, padding="causal", dilation=d, **kw)
        state = x.new_zeros(N, C, d * (K - 1))
        got = _decode(x, state, kw, d, deterministic=deterministic)
    assert C > cfg["BLOCK_C"] and (cfg["M_SPLITS"] > 1 or M <= cfg["BLOCK_M"])
    assert_close(state, torch.cat([x.new_zeros(N, C, d * (K - 1)), x], -1)[..., L:], dtype, 1,
                 "state")
    assert_close(got, whole.double(), dtype, K + C * mult, "decoded y", tf32=TF32)
    for (dev, _, _, atomic), (part, count) in launchers._STEP_SPACE.items():
        assert not count.any(), "a counter was left non-zero"
        if atomic:
            assert not part.any(), "the atomic partial sums were left non-zero"


@pytest.mark.portable
def test_explicit_splits_cover_the_last_reader_and_the_last_arrival():
    """Launcher level, fixed tiles: 3 channel blocks x 3 M splits x 2 stream blocks, both
    reductions, against the fp64 reference of one frame; the state moved exactly once."""
    N, C, M, K, d = 20, 40, 70, 5, 3
    g = torch.Generator().manual_seed(0)
    x, state = torch.randn(N, C, generator=g), torch.randn(N, C, d * (K - 1), generator=g)
    wd, bd = torch.randn(C, 1, 1, K, generator=g), torch.randn(C, generator=g)
    wp, bp = torch.randn(M, C, 1, 1, generator=g), torch.randn(M, generator=g)
    frames = torch.cat([state, x[..., None]], -1).double()
    u = F.conv1d(frames, wd.double()[:, :, 0], bd.double(), dilation=d, groups=C)[..., -1]
    ref = u.float().double() @ wp.double()[:, :, 0, 0].t() + bp.double()
    cfg = dict(BLOCK_N=16, BLOCK_C=16, BLOCK_M=16, M_SPLITS=3, mb_per_split=2, num_warps=4)
    for deterministic in (False, True, False):
        st = state.clone().to(DEVICE)
        with permuted_program_order(seed=int(deterministic)):
            y = launchers.dsd_step(x.to(DEVICE), st, wd.to(DEVICE), bd.to(DEVICE),
                                   wp.to(DEVICE), bp.to(DEVICE), d, deterministic, None, cfg)
        assert_close(y, ref, torch.float32, K + C, "y")
        assert torch.equal(st.double().cpu(), frames[..., 1:])


def test_prefill_in_chunks_then_decode(gpu_grid):
    """A chunked call's final state carries straight into step: prompt then frames ==
    the whole sequence (the state layouts are one)."""
    N, C, M, K, d, dtype = 2, 5, 4, 3, 4, torch.float32
    kw = _weights(C, M, K, dtype)
    x = torch.randn(N, C, 14, generator=torch.Generator().manual_seed(7)).to(DEVICE, dtype)
    with torch.no_grad():
        whole = triton_dsd.dsd_conv1d(x, padding="causal", dilation=d, **kw)
        y0, state = triton_dsd.dsd_conv1d(x[..., :9], padding="causal", dilation=d,
                                          initial_state=None, return_final_state=True, **kw)
        rest = _decode(x[..., 9:], state, kw, d)
    assert_close(torch.cat([y0, rest], -1), whole.double(), dtype, K + C, "y", tf32=TF32)


@pytest.mark.portable
@pytest.mark.parametrize("fused", [True, False])
def test_layer_step_and_init_state(fused):
    """The layer's step (fused or not: the step is always one launch) from ``init_state`` ==
    its forward; a (N, C, 1) frame gives (N, M, 1); the given state object is the one moved."""
    torch.manual_seed(0)
    layer = triton_dsd.DepthwiseSeparableDilatedConv1d(5, 7, 3, dilation=2, padding="causal",
                                                       depth_multiplier=2, fused=fused).to(DEVICE)
    x = torch.randn(2, 5, 8, device=DEVICE)
    with torch.no_grad():
        whole = layer(x)
        state = layer.init_state(2)
        assert state.shape == (2, 5, 4) and not state.any()
        ptr = state.data_ptr()
        ys = [layer.step(x[..., t:t + 1], state) for t in range(8)]
    assert ys[0].shape == (2, 7, 1) and state.data_ptr() == ptr
    assert_close(torch.cat(ys, -1), whole.double(), torch.float32, 3 + 10, "y", tf32=TF32)


def test_init_state_under_autocast_has_the_frames_dtype():
    layer = triton_dsd.DepthwiseSeparableDilatedConv1d(4, 3, 3, padding="causal").to(DEVICE)
    x = torch.randn(2, 4, 6, device=DEVICE)
    dev = torch.device(DEVICE).type
    with torch.no_grad(), torch.autocast(dev, dtype=torch.bfloat16):
        state = layer.init_state(2)
        assert state.dtype == torch.bfloat16
        whole = layer(x)
        got = torch.stack([layer.step(x[..., t], state) for t in range(6)], -1)
        _bad(lambda: layer.step(x[..., 0], state.float()), TypeError, "under autocast")
    assert got.dtype == torch.bfloat16
    assert_close(got, whole.double(), torch.bfloat16, 7, "y")


def test_eager_step_matches_the_kernel():
    """The CPU fallback (no interpreter) computes the same frame and moves the state alike."""
    N, C, M, K, d = 3, 6, 5, 4, 2
    kw = _weights(C, M, K, torch.float64)
    g = torch.Generator().manual_seed(5)
    x, state = torch.randn(N, C, generator=g), torch.randn(N, C, d * (K - 1), generator=g)
    x, state = x.to(DEVICE, torch.float64), state.to(DEVICE, torch.float64)
    epi = Epilogue(torch.rand(C, device=DEVICE, dtype=torch.float64), None,
                   ACTIVATIONS["gelu"], None, None, ACTIVATIONS["hardswish"])
    epi = epi._replace(mid_shift=torch.zeros_like(epi.mid_scale))
    args = (kw["dw_weight"].unsqueeze(2), kw["dw_bias"], kw["pw_weight"].unsqueeze(3),
            kw["pw_bias"], d)
    s1, s2 = state.clone(), state.clone()
    y1 = ops.eager_step(x, s1, *args, epi)
    y2 = launchers.dsd_step(x, s2, *args, False, epi)
    assert_close(y2, y1, torch.float64, K + C, "y")
    assert torch.equal(s1, s2)


def test_step_under_torch_compile():
    """A real torch.compile run of the layer's step (the custom op mutates the state)."""
    torch._dynamo.reset()
    layer = triton_dsd.DepthwiseSeparableDilatedConv1d(4, 3, 3, padding="causal").to(DEVICE)
    x = torch.randn(2, 4, 5, device=DEVICE)
    step = torch.compile(layer.step, fullgraph=True)
    with torch.no_grad():
        whole = layer(x)
        state = layer.init_state(2)
        _runtime.LAUNCHES.clear()
        got = torch.stack([step(x[..., t], state) for t in range(5)], -1)
    assert _runtime.LAUNCHES["dsd_step_kernel"] == 5
    assert_close(got, whole.double(), torch.float32, 7, "y", tf32=TF32)


# ----------------------------------------------------------------------------- bad input
def _bad(fn, exc, pattern):
    _runtime.LAUNCHES.clear()
    with pytest.raises(exc, match=pattern):
        fn()
    assert not _runtime.LAUNCHES, "a kernel launched before the error"


def test_bad_states_and_frames_are_refused_before_any_launch():
    N, C, M, K, d = 2, 5, 4, 3, 2
    kw = _weights(C, M, K, torch.float32)
    x = torch.randn(N, C, device=DEVICE)
    good = torch.zeros(N, C, d * (K - 1), device=DEVICE)
    step = lambda x, s, **k: triton_dsd.dsd_conv1d_step(x, s, dilation=d, **kw, **k)  # noqa
    with torch.no_grad():
        _bad(lambda: step(x, good[..., :3]), ValueError,
             re.escape("`state` must have shape (N, C, dilation*(K-1)) = (2, 5, 4)"))
        _bad(lambda: step(x, good[:1]), ValueError, "`state` must have shape")
        _bad(lambda: step(x, good[0]), ValueError, "`state` must be a 3D tensor")
        _bad(lambda: step(x, good.double()), TypeError, "`state` has dtype torch.float64")
        _bad(lambda: step(x, good.to("meta")), ValueError, "state")
        _bad(lambda: step(x, good[:1].expand(N, -1, -1)), ValueError, "expanded")
        _bad(lambda: step(x, good.new_zeros(40).as_strided((N, C, 4), (5, 1, 1))), ValueError,
             "overlapping")
        _bad(lambda: step(x, [0.0]), TypeError, "`state` must be a torch.Tensor")
        _bad(lambda: step(x[..., None, None], good), ValueError, "`x` must be one frame")
        _bad(lambda: step(x[:, :4], good), ValueError, "x")
        _bad(lambda: triton_dsd.dsd_conv1d_step(x, good, kw["dw_weight"]), TypeError,
             "`pw_weight` is required")
        _bad(lambda: step(x, good, mid_act="tanhh"), ValueError, "mid_act")
    _bad(lambda: step(x.requires_grad_(), good), RuntimeError, "records no autograd")


@pytest.mark.parametrize("kwargs", [dict(padding=1), dict(padding="same"),
                                    dict(padding="valid")])
def test_step_on_a_layer_that_cannot_decode_is_refused(kwargs):
    layer = triton_dsd.DepthwiseSeparableDilatedConv1d(4, 3, 3, **kwargs).to(DEVICE)
    x = torch.randn(2, 4, device=DEVICE)
    _bad(lambda: layer.step(x, torch.zeros(2, 4, 2, device=DEVICE)), ValueError,
         "decodes a causal 1D layer")
    _bad(lambda: layer.init_state(2), ValueError, "decodes a causal 1D layer")
    layer2d = triton_dsd.DepthwiseSeparableDilatedConv2d(4, 3, 3).to(DEVICE)
    _bad(lambda: layer2d.step(x, torch.zeros(2, 4, 2, device=DEVICE)), ValueError,
         "decodes a causal 1D layer")


# ----------------------------------------------------------------------------- bench and cost
def test_step_cost_is_the_bytes_floor_of_one_frame():
    """Weights once, x_t and y_t, the K-1 state frames the taps read and the one it gains."""
    c = cost.step_cost(N=8, C=256, M=512, K=4, dilation=2, dtype_bytes=2)
    weights = (256 * 4 + 256) + (256 * 512 + 512)
    assert c.bytes_fused == 2 * (weights + 8 * 256 + 8 * 512 + 8 * 256 * (3 + 1))
    assert c.macs == 8 * 256 * 4 + 8 * 256 * 512
    b, fv, fm = cost.op_work(c, "dsd", "step")
    assert (b, fv + fm) == (c.bytes_fused, 2 * c.macs)


def test_bench_step_mode_rows():
    """`bench` mode 'step' times our step against the eager decode (real runs; under the
    interpreter the times mean nothing) and only for 1D problems."""
    from triton_dsd import bench
    from triton_dsd.problems import Problem
    p1 = Problem(N=2, C=4, M=3, H=1, W=8, K=3, dilation=2, dim=1, dtype=torch.float32,
                 device=torch.device(DEVICE))
    p2 = Problem(N=2, C=4, M=3, H=5, W=5, K=3, dim=2, dtype=torch.float32,
                 device=torch.device(DEVICE))
    _runtime.LAUNCHES.clear()
    rows = bench.run([p1, p2], ["dsd"], ["triton_fused", "eager", "eager_cudnn"], ["step"],
                     progress=lambda m: None)
    assert {(r["provider"], r["dim"]) for r in rows} == {("triton_fused", 1), ("eager", 1)}
    assert all(r["mode"] == "step" and float(r["ms_p50"]) > 0 for r in rows)
    assert _runtime.LAUNCHES["dsd_step_kernel"] > 0


def test_readme_tcn_decodes_frame_by_frame():
    """The README's TCN example (dilations 1, 2, 4, 8), run as written: decoding frame by
    frame equals the full pass (here on the interpreter, with the step kernel)."""
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "README.md")) as f:
        text = f.read()
    block = text.split("<!-- tcn-example -->")[1].split("<!-- /tcn-example -->")[0]
    code = block.split("```python")[1].split("```")[0]
    _runtime.LAUNCHES.clear()
    exec(compile(code, "README.md:tcn-example", "exec"), {"__name__": "readme"})
    assert _runtime.LAUNCHES["dsd_step_kernel"] == 4 * 50  # four layers, fifty frames
