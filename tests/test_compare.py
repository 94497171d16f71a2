"""``triton_dsd.compare``: per-layer differences between a model and its converted copy."""
import torch
from torch import nn

import triton_dsd

from helpers import DEVICE, ran


class LayerScaleBlock(nn.Module):
    """x + 1e-6 * pw(dw(x)): ConvNeXt's layer scale hides whatever the branch computes."""

    def __init__(self, C=4):
        super().__init__()
        self.branch = nn.Sequential(nn.Conv2d(C, C, 3, padding=2, dilation=2, groups=C),
                                    nn.Conv2d(C, C, 1))
        self.gamma = 1e-6

    def forward(self, x):
        return x + self.gamma * self.branch(x)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 1), LayerScaleBlock()).to(DEVICE).eval()


def test_converted_model_matches_layer_by_layer():
    model = _model()
    conv = triton_dsd.convert(model)
    x = torch.randn(2, 3, 6, 7, device=DEVICE)
    rows = triton_dsd.compare(model, conv, x)
    assert ran("dsd_fwd_kernel")  # the fused pair ran (counters are reset per test)
    paths = [r.path for r in rows]
    assert "" in paths and "1.branch" in paths  # the whole model and the fused pair
    assert max(r.max_rel for r in rows) < 1e-5, str(rows)


def test_a_wrong_layer_shows_although_the_output_hides_it():
    """Break the converted branch: the model output moves by ~1e-6 (the layer scale) while the
    branch's own output is wrong by O(1): the report names it."""
    model = _model()
    conv = triton_dsd.convert(model)
    with torch.no_grad():
        conv[1].branch[1].weight.mul_(-1.0)  # the fused pair keeps the pointwise at [1]
    x = torch.randn(2, 3, 6, 7, device=DEVICE)
    rows = triton_dsd.compare(model, conv, x)
    by_path = {r.path: r for r in rows}
    assert by_path[""].max_rel < 1e-5  # the final output looks fine
    assert by_path["1.branch"].max_rel > 0.5  # the layer does not
    assert rows.worst(1)[0].path in ("1.branch", "1.branch.1")
    text = str(rows)
    assert "1.branch" in text and "max rel" in text
