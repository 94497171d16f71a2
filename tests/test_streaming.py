"""Streaming a causal 1D layer: a sequence fed in chunks of any size (1 included), the state
(the last dilation*(K-1) input frames of the depthwise stage) carried from chunk to chunk,
gives the whole sequence's output, fused and unfused, every dtype; gradients reach the state
(truncated-BPTT training); bad states are refused before any launch."""
import os

import pytest
import torch
from hypothesis import given, note, seed, settings, strategies as st

import triton_dsd
from triton_dsd import _runtime
from triton_dsd.testing import assert_close

from helpers import DEVICE
HYPOTHESIS_SEED = int(os.environ["TRITON_DSD_HYPOTHESIS_SEED"])  # set (and printed) by conftest


def _chunks(L, cuts):
    edges = sorted({0, L, *[c % (L + 1) for c in cuts]})
    return list(zip(edges[:-1], edges[1:]))


def _streamed(fn, x, bounds, **kw):
    state, ys = None, []
    for a, b in bounds:
        y, state = fn(x[..., a:b], initial_state=state, return_final_state=True, **kw)
        ys.append(y)
    return torch.cat(ys, dim=-1), state


@settings(max_examples=int(os.environ.get("TRITON_DSD_HYPOTHESIS_EXAMPLES", 12)),
          deadline=None, database=None, print_blob=True)
@seed(HYPOTHESIS_SEED)
@given(K=st.sampled_from([2, 3, 4, 7, 31]), d=st.sampled_from([1, 2, 4, 8]),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
       fused=st.booleans(), channel_last=st.booleans(), L=st.integers(1, 40),
       cuts=st.lists(st.integers(0, 40), max_size=4), ones=st.booleans())
def test_chunked_equals_whole(K, d, dtype, fused, channel_last, L, cuts, ones):
    note(f"hypothesis seed {HYPOTHESIS_SEED}")
    g = torch.Generator().manual_seed(HYPOTHESIS_SEED % 1000)
    C, M = 3, 4
    x = torch.randn(2, C, L, generator=g).to(DEVICE, dtype)
    if channel_last:
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    wd = torch.randn(C, 1, K, generator=g).to(DEVICE, dtype)
    wp = torch.randn(M, C, 1, generator=g).to(DEVICE, dtype)
    bd = torch.randn(C, generator=g).to(DEVICE, dtype)
    kw = dict(dw_weight=wd, dw_bias=bd, pw_weight=wp, padding="causal", dilation=d, fused=fused)
    whole = triton_dsd.dsd_conv1d(x, **kw)
    bounds = [(i, i + 1) for i in range(L)] if ones else _chunks(L, cuts)
    _runtime.LAUNCHES.clear()
    got, state = _streamed(triton_dsd.dsd_conv1d, x, bounds, **kw)
    assert _runtime.LAUNCHES["dsd_fwd_kernel" if fused else "depthwise_fwd_kernel"] == len(bounds)
    assert_close(got, whole.double(), dtype, K + C, "chunked y")
    width = d * (K - 1)
    tail = torch.cat([x.new_zeros(2, C, width), x], dim=-1)[..., -width:] if width else \
        x[..., :0]
    assert torch.equal(state, tail)


@pytest.mark.parametrize("fused", [True, False])
def test_layer_streams_and_gradients_reach_the_state(fused):
    torch.manual_seed(0)
    layer = triton_dsd.DepthwiseSeparableDilatedConv1d(3, 4, 3, 2, "causal", fused=fused)
    layer = layer.double().to(DEVICE)
    x = torch.randn(1, 3, 9, dtype=torch.float64, device=DEVICE)
    s0 = torch.randn(1, 3, 4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    y, s1 = layer(x[..., :5], initial_state=s0, return_final_state=True)
    y2, s2 = layer(x[..., 5:], initial_state=s1, return_final_state=True)
    # the reference: the whole sequence after the state, eagerly
    eager = triton_dsd.EagerDepthwiseSeparableDilatedConv1d(3, 4, 3, 2, 0).double().to(DEVICE)
    eager.load_state_dict(layer.state_dict())
    s0r = s0.detach().clone().requires_grad_()
    want = eager(torch.cat([s0r, x], dim=-1))
    assert_close(torch.cat([y, y2], dim=-1), want, torch.float64, 10)
    (torch.cat([y, y2], dim=-1) * want.detach()).sum().backward()
    (want * want.detach()).sum().backward()
    assert_close(s0.grad, s0r.grad, torch.float64, 10, "d state")


def test_bad_states_are_refused_before_any_launch():
    x = torch.randn(2, 3, 8, device=DEVICE)
    wd, wp = torch.randn(3, 1, 3, device=DEVICE), torch.randn(4, 3, 1, device=DEVICE)
    f = triton_dsd.dsd_conv1d
    _runtime.LAUNCHES.clear()
    for state, match in ((torch.zeros(2, 3, 3, device=DEVICE), r"shape \(N, C, dilation\*\(K-1\)\)"),
                         (torch.zeros(2, 3, 2, dtype=torch.float64, device=DEVICE), "dtype"),
                         (torch.zeros(3, 2, device=DEVICE), "3D tensor")):
        with pytest.raises((ValueError, TypeError), match=match):
            f(x, wd, None, wp, None, padding="causal", initial_state=state)
    with pytest.raises(ValueError, match="need padding='causal'"):
        f(x, wd, None, wp, None, padding=1, initial_state=torch.zeros(2, 3, 2, device=DEVICE))
    layer = triton_dsd.DepthwiseSeparableDilatedConv1d(3, 4, 3, 1, "same").to(DEVICE)
    with pytest.raises(ValueError, match="stream a causal"):
        layer(x, return_final_state=True)
    assert not any(_runtime.LAUNCHES.values())
