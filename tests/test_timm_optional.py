"""Optional: convert real timm models when timm is importable (it is not in the CI
environment: ``pip install timm`` into the CPU torch 2.13 environment pulls in another torch
build through torchvision). Runs eagerly (no interpreter: these models are too large for it),
in a fresh process: the chains found, the checkpoint keys, the outputs in eval mode."""
import pytest

from helpers import ENV_NO_INTERP, run_fresh

pytest.importorskip("timm")

CODE = r"""
import torch, timm, triton_dsd
from triton_dsd.modules import SeparableChain
for name, want in (("mobilenetv2_100", 17), ("efficientnet_b0", 16), ("xception65", 60)):
    model = timm.create_model(name, pretrained=False).eval().double()
    conv = triton_dsd.convert(model).eval()
    chains = sum(isinstance(m, SeparableChain) for m in conv.modules())
    assert chains >= want, (name, chains)
    assert list(conv.state_dict()) == list(model.state_dict()), name
    x = torch.randn(1, 3, 96, 96, dtype=torch.float64)
    err = float((conv(x) - model(x)).abs().max() / model(x).abs().max())
    assert err < 1e-9, (name, err)
    print(name, chains, err)
"""


def test_timm_models_fuse_their_chains():
    out = run_fresh("-c", CODE, env=ENV_NO_INTERP, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
