"""convert on the real blocks that hold depthwise-separable convolutions (timm's separable
classes, aligned Xception, MobileNetV2, EfficientNet's MBConv, ConvNeXt; written out in
``tests/blocks.py``): the fused kernel fires where a dw -> pw chain exists, outputs, every
gradient and the running statistics equal eager's, the checkpoint keys are the original's."""
import copy
import io

import pytest
import torch
from torch import nn

import triton_dsd
from triton_dsd import _runtime
from triton_dsd.modules import Bypassed, SeparableChain
from triton_dsd.testing import assert_close, tolerance

from blocks import BLOCKS, randomize_norms
from helpers import DEVICE

SIZE = 9  # odd: TensorFlow 'SAME' padding with stride 2 pads unevenly


def _setup(name, dtype):
    build, c, launches, *dims = BLOCKS[name]
    torch.manual_seed(0)
    model = randomize_norms(build()).to(DEVICE, torch.float64)
    conv, report = triton_dsd.convert(model, return_report=True)
    spatial = (SIZE, SIZE) if (dims or [2])[0] == 2 else (5 * SIZE,)
    x = torch.randn(2, c, *spatial, device=DEVICE, dtype=torch.float64)
    return model, conv.to(dtype), report, x, launches


def _has_norm(conv):
    return any(type(m) is Bypassed and isinstance(m.original, nn.modules.batchnorm._BatchNorm)
               for m in conv.modules())


def _run(model, x, dtype):
    torch.manual_seed(7)  # the same dropout masks for the eager and the converted model
    x = x.detach().to(dtype).requires_grad_()
    y = model(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y.backward(g.to(y.device, dtype))
    grads = {n: p.grad for n, p in model.named_parameters()}
    return y, x.grad, grads


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_equals_eager_in_float64(name, training):
    model, conv, report, x, launches = _setup(name, torch.float64)
    assert list(conv.state_dict()) == list(model.state_dict())
    model.train(training)
    conv.train(training)
    _runtime.LAUNCHES.clear()
    y, dx, grads = _run(conv, x, torch.float64)
    fused = _runtime.LAUNCHES["dsd_fwd_kernel"]
    if training and _has_norm(conv):  # batch statistics: the Triton stages, eager norms
        assert fused == 0 and _runtime.LAUNCHES["depthwise_fwd_kernel"] > 0
    else:
        assert fused == launches, [str(r) for r in report]
    assert _runtime.LAUNCHES["depthwise_fwd_kernel"] + fused > 0  # a Triton kernel ran
    y_ref, dx_ref, grads_ref = _run(model, x, torch.float64)
    assert_close(y, y_ref, torch.float64, 200, "y")
    assert_close(dx, dx_ref, torch.float64, 200, "dx")
    assert list(grads) == list(grads_ref)
    # a gradient that is zero in exact arithmetic (a conv bias right before a batch norm in
    # training) is rounding noise on both sides: the scale is the block's largest gradient
    floor = torch.tensor(max(float(g.abs().max()) for g in grads_ref.values()))
    for n in grads_ref:
        assert grads[n] is not None, n
        assert_close(grads[n], grads_ref[n], torch.float64, 2000, n, magnitude=floor)
    for (n, a), b in zip(model.named_buffers(), conv.buffers()):  # running stats moved alike
        assert_close(b, a, torch.float64, 10, n)


@pytest.mark.parametrize("dtype, training", [(torch.float32, False), (torch.float16, False),
                                             (torch.bfloat16, False), (torch.float32, True)],
                         ids=["fp32-eval", "fp16-eval", "bf16-eval", "fp32-train"])
@pytest.mark.parametrize("name", ["xception_block", "mobilenetv2_inverted_residual",
                                  "mbconv_no_se", "separable_conv_norm_act",
                                  "torchvision_cnblock", "conformer_conv_module"])
def test_block_per_dtype(name, dtype, training):
    model, conv, _, x, launches = _setup(name, dtype)
    model.train(training)
    conv.train(training)
    _runtime.LAUNCHES.clear()
    y, dx, grads = _run(conv, x, dtype)
    fused = 0 if training and _has_norm(conv) else launches
    assert _runtime.LAUNCHES["dsd_fwd_kernel"] == fused
    eager = copy.deepcopy(model).to(dtype)
    y_ref, dx_ref, grads_ref = _run(model, x, torch.float64)
    y_eager, dx_eager, grads_eager = _run(eager, x, dtype)
    assert y.dtype == dtype

    def close(got, ref, eager_got, n, name):
        """Within the dtype's tolerance of float64, or at most twice as far as eager PyTorch
        in the same dtype is (a gradient summed over the batch with cancelling terms)."""
        got, ref, eager_got = got.detach(), ref.detach(), eager_got.detach()
        scale = float(ref.abs().max())
        bound = max(tolerance(dtype, n) * scale, 2 * float((eager_got.double() - ref).abs().max()))
        err = float((got.double() - ref).abs().max())
        assert err <= bound, f"{name}: {err:.3e} > {bound:.3e} (eager {dtype}: " \
            f"{float((eager_got.double() - ref).abs().max()):.3e})"

    close(y, y_ref, y_eager, 300, "y")
    close(dx, dx_ref, dx_eager, 300, "dx")
    for n in grads_ref:
        close(grads[n], grads_ref[n], grads_eager[n], 300, n)


def test_checkpoints_load_both_ways_and_to_eager_restores():
    model, conv, report, x, _ = _setup("xception_block", torch.float64)
    assert sum(isinstance(m, SeparableChain) for m in conv.modules()) == 3
    ckpt = model.state_dict()
    assert list(conv.state_dict()) == list(ckpt)
    conv.load_state_dict(ckpt, strict=True)
    model.load_state_dict(conv.state_dict(), strict=True)
    # the parameters sit at their original paths
    assert conv.stack[0].conv_pw.weight is conv.stack[0].conv_pw.original.weight
    assert conv.stack[0].conv_dw.weight is conv.stack[0].conv_dw.conv.weight
    buf = io.BytesIO()
    torch.save(conv, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False).eval()
    model.eval()
    assert_close(again(x), model(x), torch.float64, 200)
    back = triton_dsd.to_eager(conv)
    assert type(back.stack[0].bn_dw) is nn.BatchNorm2d and type(back.stack[0].conv_dw) is nn.Conv2d
    assert list(back.state_dict()) == list(ckpt)
    # .to() and train()/eval() reach the slots and the head's originals
    conv.float().train()
    assert conv.stack[0].bn_dw.original.running_mean.dtype == torch.float32
    assert conv.stack[0].bn_dw.synced().training


def test_report_lists_every_path():
    _, conv, report, _, _ = _setup("mobilenetv2_inverted_residual", torch.float64)
    lines = {r.name: r for r in report}
    assert lines["conv.1.0"].new == "SeparableChain"
    for path in ("conv.1.1", "conv.1.2", "conv.2", "conv.3"):
        assert lines[path].new == "Bypassed" and "conv.1.0" in lines[path].note
    _, _, report, _, _ = _setup("torchvision_cnblock", torch.float64)
    lines = {r.name: r for r in report}
    assert lines["block.0"].new == "SeparableChain" and "layer norm" in lines["block.0"].note
    assert [lines[f"block.{i}"].new for i in range(1, 5)] == ["Bypassed"] * 4
    assert "block.5" not in lines  # the second Linear is not part of the chain


def test_a_hooked_link_is_not_fused():
    model = randomize_norms(BLOCKS["xception_block"][0]()).double()
    seen = []
    model.stack[1].bn_dw.register_forward_hook(lambda m, i, o: seen.append(1))
    conv, report = triton_dsd.convert(model, return_report=True)
    assert type(conv.stack[1].bn_dw) is nn.BatchNorm2d
    assert isinstance(conv.stack[0].conv_dw, SeparableChain)
    conv.eval()(torch.randn(1, 4, SIZE, SIZE, dtype=torch.float64))
    assert seen and any("hooks" in r.note for r in report)


def test_a_function_between_the_stages_is_not_fused():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
            self.pw = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.pw(torch.tanh(self.dw(x)))

    conv, report = triton_dsd.convert(Block(), return_report=True)
    assert not any(isinstance(m, SeparableChain) for m in conv.modules())
    assert isinstance(conv.dw, triton_dsd.DepthwiseConv2d)  # swapped alone


def test_converted_block_under_torch_compile():
    model, conv, _, x, launches = _setup("mobilenetv2_inverted_residual", torch.float32)
    model.eval()
    conv.eval()
    x = x.float()
    compiled = torch.compile(conv, fullgraph=True, backend="aot_eager")
    _runtime.LAUNCHES.clear()
    y = compiled(x)
    assert _runtime.LAUNCHES["dsd_fwd_kernel"] == launches
    assert_close(y, model(x.double()), torch.float32, 300)


# ----------------------------------------------------------------------------- after convert
def _sep():
    from blocks import XceptionSeparableConv2d
    torch.manual_seed(0)
    return randomize_norms(XceptionSeparableConv2d(4, 6)).double()


def test_changes_after_convert_raise_rather_than_compute_something_else():
    x = torch.randn(1, 4, SIZE, SIZE, dtype=torch.float64, device=DEVICE)
    conv = triton_dsd.convert(_sep().to(DEVICE)).eval()
    conv(x)
    conv.bn_pw.momentum = 0.5  # the original's attributes are read and written through
    assert conv.bn_pw.original.momentum == 0.5 and conv.conv_dw.kernel_size == (3, 3)
    handle = conv.bn_dw.register_forward_hook(lambda *a: None)
    with pytest.raises(RuntimeError, match="hooks registered since"):
        conv(x)
    handle.remove()
    conv.act_pw = nn.Hardswish()
    with pytest.raises(RuntimeError, match="was replaced after"):
        conv(x)
    seq = triton_dsd.convert(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4),
                                           nn.BatchNorm2d(4), nn.Dropout(0.0),
                                           nn.Conv2d(4, 6, 1), nn.ReLU()).double().to(DEVICE))
    seq.eval()(x)
    seq[2].p = 0.3  # an identity link that stopped being one
    with pytest.raises(RuntimeError, match="changed after"):
        seq(x)
    seq[2].p = 0.0
    with pytest.raises(RuntimeError, match="cuts a chain"):
        seq[:-1]
    ref = nn.Sequential(*[m.original for m in list(seq)[1:]])
    assert_close(seq[3:](x[:, :4]), ref[2:](x[:, :4]), torch.float64, 10)  # slots run alone
    replica = seq[0]._replicate_for_data_parallel()
    with pytest.raises(RuntimeError, match="DataParallel"):
        replica(x)


def test_type_based_passes_and_old_checkpoints_still_work():
    model = _sep()
    ckpt = {k: v.clone() for k, v in model.state_dict().items() if "num_batches" not in k}
    conv = triton_dsd.convert(model).train()
    frozen = [m for m in conv.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(frozen) == 2 and all(type(m) is Bypassed for m in frozen)
    for m in frozen:  # the usual "freeze batch norm" recipe
        m.eval()
    before = conv.bn_dw.running_mean.clone()
    x = torch.randn(2, 4, SIZE, SIZE, dtype=torch.float64, device=DEVICE)
    _runtime.LAUNCHES.clear()
    conv.to(DEVICE)(x)
    assert torch.equal(conv.bn_dw.running_mean, before.to(DEVICE))
    assert _runtime.LAUNCHES["dsd_fwd_kernel"] == 1  # frozen norms fold: one launch
    # a checkpoint from before num_batches_tracked existed loads as into nn.BatchNorm2d
    meta = model.state_dict()._metadata
    old = type(model.state_dict())(ckpt)
    old._metadata = {k: dict(v, version=1) for k, v in meta.items()}
    conv.load_state_dict(old, strict=True)


def test_forwards_that_branch_on_training_or_store_intermediates_are_not_fused():
    class Branch(nn.Module):
        def __init__(self):
            super().__init__()
            self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
            self.bn = nn.BatchNorm2d(4)
            self.pw = nn.Conv2d(4, 6, 1)

        def forward(self, x):
            x = self.bn(self.dw(x))
            if self.training:
                x = x * 0.5
            self.mid = x
            return self.pw(x)

    class Store(Branch):
        def forward(self, x):
            self.mid = self.bn(self.dw(x))
            return self.pw(self.mid)

    for cls, why in ((Branch, "call_function mul"), (Store, "stored as an attribute")):
        conv, report = triton_dsd.convert(cls().eval(), return_report=True)
        assert not any(isinstance(m, SeparableChain) for m in conv.modules())
        assert not hasattr(conv, "mid")  # tracing left nothing on the model
        assert any(why in r.note for r in report), [str(r) for r in report]
