"""What a new user hit: convert fusing by class name, hooks and wrappers, state_dict keys,
nn.Conv2d's positional order and unbatched inputs, the interpreter flag, autocast on the ops."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import triton_dsd
from triton_dsd import _runtime
from triton_dsd.convert import FusedSequential
from triton_dsd.testing import assert_close
from helpers import DEVICE, ran, run_fresh


def _named(cls_name, forward):
    """A user module with the article's children whose class is named ``cls_name``."""

    class User(nn.Module):
        def __init__(self):
            super().__init__()
            self.depthwise = nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4)
            self.pointwise = nn.Conv2d(4, 6, 1)

        def forward(self, x):
            return forward(self, x)

    User.__name__ = cls_name
    return User()


# ----------------------------------------------------------------------------- 1: by name
def test_convert_does_not_fuse_a_lookalike_class_by_its_name():
    """A user class named like the article's, whose forward puts a ReLU between the convs, is
    not fused (the output stays equal); its convs are still swapped one by one."""
    torch.manual_seed(0)
    model = _named("DepthwiseSeparableDilatedConv2d",
                   lambda self, x: self.pointwise(torch.relu(self.depthwise(x)))).to(DEVICE)
    x = torch.randn(2, 4, 9, 9, device=DEVICE)
    expect = model(x)
    conv, report = triton_dsd.convert(model, return_report=True)
    assert not isinstance(conv, triton_dsd.DepthwiseSeparableDilatedConv2d)
    assert_close(conv(x), expect.double(), torch.float32, 40)
    lines = [str(r) for r in report]
    assert any("not fused" in line and "pointwise(depthwise(x))" in line for line in lines), lines
    assert isinstance(conv.depthwise, triton_dsd.DepthwiseConv2d)


def test_convert_fuses_a_class_it_proves_equal():
    torch.manual_seed(0)
    model = _named("Whatever", lambda self, x: self.pointwise(self.depthwise(x))).to(DEVICE)
    conv, report = triton_dsd.convert(model, return_report=True)
    assert isinstance(conv, triton_dsd.DepthwiseSeparableDilatedConv2d)
    assert "proven equal" in str(report[0])
    x = torch.randn(2, 4, 9, 9, device=DEVICE)
    assert_close(conv(x), model(x).double(), torch.float32, 40)
    assert list(conv.state_dict()) == list(model.state_dict())


# ----------------------------------------------------------------------------- 2: hooks
def test_convert_carries_hooks_over():
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8)).to(DEVICE)
    handle = model[0].register_forward_hook(lambda m, inp, out: out * 2)
    x = torch.randn(1, 8, 6, 6, device=DEVICE)
    expect = model(x)
    conv, report = triton_dsd.convert(model, inplace=False, return_report=True)
    assert isinstance(conv[0], triton_dsd.DepthwiseConv2d)
    assert "hooks carried over" in str(report[0])
    assert_close(conv(x), expect.double(), torch.float32, 9)
    # the same hook dictionary: the handle still removes it (on the in-place conversion)
    conv2 = triton_dsd.convert(model, inplace=True)
    handle.remove()
    assert_close(conv2(x), (expect / 2).double(), torch.float32, 9)


def test_pruned_and_spectral_norm_convs_are_left_alone_with_a_reason():
    from torch.nn.utils import prune
    pruned = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    prune.l1_unstructured(pruned, "weight", amount=0.5)
    normed = torch.nn.utils.spectral_norm(nn.Conv2d(4, 4, 3, padding=1, groups=4))
    model = nn.Sequential(pruned, nn.ReLU(), normed).to(DEVICE)
    x = torch.randn(1, 4, 6, 6, device=DEVICE)
    model.eval()
    expect = model(x)
    conv, report = triton_dsd.convert(model, return_report=True)  # a deep copy: must not crash
    assert [r.replaced for r in report] == [False, False]
    assert all("not a Parameter" in r.note for r in report), [str(r) for r in report]
    assert_close(conv(x), expect.double(), torch.float32, 9)


def test_parametrized_and_subclassed_convs_are_reported():
    par = nn.Conv2d(4, 4, 3, groups=4)
    torch.nn.utils.parametrize.register_parametrization(par, "weight", nn.Identity())

    class MyConv(nn.Conv2d):
        def forward(self, x):
            return super().forward(x) + 1

    _, report = triton_dsd.convert(nn.Sequential(par, MyConv(4, 4, 3, groups=4)),
                                   return_report=True)
    notes = [r.note for r in report]
    assert any("parametrized" in n for n in notes) and any("MyConv" in n for n in notes), notes


# ----------------------------------------------------------------------------- 3: keys
@pytest.mark.parametrize("dim", [1, 2])
def test_fused_sequential_keeps_the_checkpoint_keys(dim):
    conv = nn.Conv2d if dim == 2 else nn.Conv1d
    torch.manual_seed(0)
    # (Tanh is no epilogue activation: the pair alone fuses; a ReLU there would join it as a
    # SeparableChain, tests/test_real_blocks.py)
    model = nn.Sequential(conv(4, 8, 3, padding=1, groups=4), conv(8, 5, 1), nn.Tanh()).to(DEVICE)
    ckpt = {k: v.clone() for k, v in model.state_dict().items()}
    fused = triton_dsd.convert(model)
    assert isinstance(fused, FusedSequential) and fused.fused_pairs == (("0", "1"),)
    assert list(fused.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    fused.load_state_dict(ckpt, strict=True)
    model.load_state_dict(fused.state_dict(), strict=True)
    x = torch.randn(2, 4, *((7, 9) if dim == 2 else (11,)), device=DEVICE)
    _runtime.LAUNCHES.clear()
    assert_close(fused(x), model(x).double(), torch.float32, 40)
    assert ran("dsd_fwd_kernel")
    back = triton_dsd.to_eager(fused)
    assert type(back) is nn.Sequential and list(back.state_dict()) == list(ckpt)


# ----------------------------------------------------------------------------- 4: children
def test_separable_layer_calls_through_hooked_or_wrapped_children():
    torch.manual_seed(0)
    layer = triton_dsd.DepthwiseSeparableDilatedConv2d(4, 6, 3, 2, "same").to(DEVICE)
    x = torch.randn(1, 4, 7, 7, device=DEVICE)
    plain = layer(x)
    assert layer.fuses()
    seen = []
    h = layer.depthwise.register_forward_hook(lambda m, i, o: seen.append("dw"))
    h2 = layer.pointwise.register_forward_pre_hook(lambda m, i: seen.append("pw"))
    assert not layer.fuses()
    assert_close(layer(x), plain.double(), torch.float32, 40)
    assert seen == ["dw", "pw"]
    h.remove()
    h2.remove()

    class LoRA(nn.Module):  # a wrapper placed on the pointwise conv: its delta must be applied
        def __init__(self, base):
            super().__init__()
            self.base = base
            self.delta = nn.Parameter(torch.full((6, 1, 1), 0.5, device=DEVICE))

        def forward(self, z):
            return self.base(z) + self.delta

    layer.pointwise = LoRA(layer.pointwise)
    assert not layer.fuses()
    assert_close(layer(x), (plain + 0.5).double(), torch.float32, 40)


# ----------------------------------------------------------------------------- 5: nn.Conv order
def test_depthwise_conv_is_positionally_nn_conv2d():
    ref = nn.Conv2d(8, 8, 3, 1, 1, 1, 8, False)
    ours = triton_dsd.DepthwiseConv2d(8, 8, 3, 1, 1, 1, 8, False)
    assert ours.bias is None and ours.padding_mode == "zeros" and ours.groups == 8
    assert repr(ours).replace("DepthwiseConv2d", "Conv2d") == repr(ref)
    assert triton_dsd.DepthwiseConv2d(3, 3, 3, 2).stride == (2, 2)  # 4th slot: stride
    assert triton_dsd.DepthwiseSeparableDilatedConv2d(3, 3, 3, 2).depthwise.dilation == (2, 2)
    assert triton_dsd.PointwiseConv2d(4, 5, 1, 1, 0, 1, 1, False).bias is None


@pytest.mark.parametrize("dim", [1, 2])
def test_unbatched_inputs_as_nn_conv(dim):
    torch.manual_seed(0)
    conv = nn.Conv2d if dim == 2 else nn.Conv1d
    ref = conv(3, 6, 3, padding=1, groups=3)
    ours = (triton_dsd.DepthwiseConv2d if dim == 2 else triton_dsd.DepthwiseConv1d)(3, 6, 3, padding=1)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, *((5, 7) if dim == 2 else (9,)))
    expect = ref(x)
    y = ours.to(DEVICE)(x.to(DEVICE))
    assert y.shape == expect.shape
    assert_close(y, expect.double(), torch.float32, 9)
    sep = (triton_dsd.DepthwiseSeparableDilatedConv2d if dim == 2
           else triton_dsd.DepthwiseSeparableDilatedConv1d)(3, 4, 3, 1, 1).to(DEVICE)
    assert sep(x.to(DEVICE)).shape == (4, *x.shape[1:])


# ----------------------------------------------------------------------------- 6: the flag
def test_setting_triton_interpret_after_import_is_a_clear_error():
    code = ("import os, torch, triton_dsd\n"
            "os.environ['TRITON_INTERPRET'] = '1'\n"
            "try:\n"
            "    triton_dsd.depthwise_conv2d(torch.randn(1, 2, 5, 5), torch.randn(2, 1, 3, 3))\n"
            "except RuntimeError as e:\n"
            "    print('ERR', e)\n")
    out = run_fresh("-c", code, timeout=300)
    assert "ERR" in out.stdout and "before the first `import triton_dsd`" in out.stdout, \
        out.stdout + out.stderr


# ----------------------------------------------------------------------------- 7: API
def test_dsd_biases_are_keyword_optional():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 6, 6, generator=g).to(DEVICE)
    dw, pw = torch.randn(3, 1, 3, 3, generator=g).to(DEVICE), torch.randn(4, 3, 1, 1, generator=g).to(DEVICE)
    y = triton_dsd.dsd_conv2d(x, dw, pw_weight=pw, padding=1)
    ref = F.conv2d(F.conv2d(x.cpu().double(), dw.cpu().double(), None, 1, 1, groups=3),
                   pw.cpu().double())
    assert_close(y, ref, torch.float32, 27)


def test_the_ops_follow_autocast():
    """torch.ops.triton_dsd.* under autocast compute in the autocast dtype, as F.conv2d does."""
    dev = DEVICE
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 6, 6, generator=g).to(dev)
    w = torch.randn(3, 1, 3, 3, generator=g).to(dev)
    pw = torch.randn(4, 3, 1, 1, generator=g).to(dev)
    geo = ([1, 1], [1, 1, 1, 1], [1, 1])
    ops = torch.ops.triton_dsd
    with torch.autocast(dev, dtype=torch.bfloat16):
        y = ops.depthwise_fwd(x, w, None, *geo, False)
        z = ops.pointwise_fwd(x, pw, None, False)
        s = ops.dsd_fwd(x, w, None, pw, None, *geo, False)
        ref = F.conv2d(x, w, None, 1, 1, 1, 3)
    assert y.dtype == z.dtype == s.dtype == ref.dtype == torch.bfloat16
    assert_close(y, F.conv2d(x.bfloat16().double(), w.bfloat16().double(), None, 1, 1, 1, 3),
                 torch.bfloat16, 9)
    with torch.autocast(dev, dtype=torch.float16):
        assert ops.depthwise_fwd(x, w, None, *geo, False).dtype == torch.float16
        assert ops.depthwise_fwd(x.double(), w.double(), None, *geo, False).dtype == torch.float64


# ----------------------------------------------------------------------------- review cases
def _article_like(forward, dtype=torch.float32, own_param=False):
    m = _named("Article", forward)
    if own_param:
        m.scale = nn.Parameter(torch.ones(1))
    return m.to(DEVICE, dtype)


@pytest.mark.parametrize("forward,why", [
    (lambda self, x: self.pointwise(self.depthwise(x)) * 1.01, "not pointwise(depthwise(x))"),
    (lambda self, x: self.pointwise(self.depthwise(x)) + 0.3, "not pointwise(depthwise(x))"),
    (lambda self, x: self.pointwise(F.dropout(self.depthwise(x), 0.5, self.training)),
     "train mode"),
], ids=["scaled-1pct", "shifted", "dropout-between"])
def test_the_proof_is_exact_even_for_bf16_models(forward, why):
    """A bf16 model whose forward differs from the separable conv by 1% is not fused (the proof
    runs in float64, in train and eval mode), even when converted in eval mode."""
    model = _article_like(forward, torch.bfloat16).eval()
    conv, report = triton_dsd.convert(model, return_report=True)
    assert not isinstance(conv, triton_dsd.DepthwiseSeparableDilatedConv2d)
    assert why in str(report[0]), [str(r) for r in report]


def test_a_module_with_parameters_of_its_own_is_not_fused():
    model = _article_like(lambda self, x: self.pointwise(self.depthwise(x)) * self.scale,
                          own_param=True)
    conv, report = triton_dsd.convert(model, return_report=True)
    assert "scale" in dict(conv.named_parameters())
    assert "parameters or buffers of its own" in str(report[0])


def test_a_conv_holding_more_than_its_weights_is_left_alone():
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    conv.observer = nn.Identity()  # e.g. a QAT fake-quant child
    _, report = triton_dsd.convert(nn.Sequential(conv), return_report=True)
    assert not report[0].replaced and "child modules (observer)" in report[0].note


def test_to_eager_leaves_what_an_nn_conv_cannot_hold():
    causal = triton_dsd.DepthwiseConv1d(3, 3, 3, padding="causal")
    back, report = triton_dsd.to_eager(nn.Sequential(causal), return_report=True)
    assert isinstance(back[0], triton_dsd.DepthwiseConv1d)
    assert "causal padding" in report[0].note
    layer = triton_dsd.DepthwiseSeparableDilatedConv2d(4, 6, 3)
    layer.pointwise = nn.Sequential(layer.pointwise)  # a wrapper
    back, report = triton_dsd.to_eager(layer, return_report=True)
    assert type(back) is type(layer) and "not one of our convs" in report[0].note
    assert "4, 6, kernel_size" in repr(back)  # the repr works with a wrapped child


def test_fused_sequential_slices_and_reconversion():
    torch.manual_seed(0)
    model = triton_dsd.convert(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4),
                                             nn.Conv2d(4, 4, 1), nn.Tanh()))
    assert model[0:2].fused_pairs == (("0", "1"),) and model[1:].fused_pairs == ()
    model.append(nn.Conv2d(4, 8, 3, padding=1, groups=4))
    model.append(nn.Conv2d(8, 2, 1))
    again, report = triton_dsd.convert(model, return_report=True)
    assert again.fused_pairs == (("0", "1"), ("3", "4")), [str(r) for r in report]


def test_chosen_config_names_each_launch_own_key():
    from triton_dsd import tuning
    a = triton_dsd.DepthwiseSeparableDilatedConv2d(4, 8, 3, 1, 1).to(DEVICE)
    b = triton_dsd.DepthwiseSeparableDilatedConv2d(8, 16, 5, 1, 2).to(DEVICE)
    x = torch.randn(1, 4, 6, 6, device=DEVICE)
    chosen = tuning.chosen_config(lambda t: b(a(t)), x)
    assert [c["kernel"] for c in chosen] == ["dsd_fwd_kernel"] * 2
    assert "K=3x3" in chosen[0]["key"] and "K=5x5" in chosen[1]["key"], chosen


def test_capture_on_one_thread_does_not_swallow_another_threads_launches():
    import threading
    started, release = threading.Event(), threading.Event()

    def capturing():
        with _runtime.capture_launches():
            started.set()
            release.wait(60)

    t = threading.Thread(target=capturing)
    t.start()
    started.wait(60)
    try:
        y = triton_dsd.depthwise_conv2d(torch.randn(1, 2, 5, 5, device=DEVICE),
                                        torch.randn(2, 1, 3, 3, device=DEVICE), padding=1)
    finally:
        release.set()
        t.join()
    assert ran("depthwise_fwd_kernel") and not torch.isnan(y).any()


def test_gpu_default_tiles_compute_the_right_numbers(monkeypatch):
    """The default tiles a GPU gets (smaller than the interpreter's) run here too."""
    from triton_dsd import configs, dispatch
    monkeypatch.setattr(configs, "INTERPRETER_TILES", False)
    dispatch.reset()
    from helpers import check_dsd
    for fused in (True, False):
        check_dsd(2, torch.float32, "cl", N=1, C=5, M=7, m=1, K=7, stride=1, padding="same",
                  dilation=1, biases=(True, True), extra=(3, 4), fused=fused)
        check_dsd(1, torch.float16, "nchw", N=2, C=3, M=4, m=2, K=3, stride=1, padding="causal",
                  dilation=2, biases=(False, True), extra=(9,), fused=fused)
    dispatch.reset()
