"""triton_dsd: Triton kernels for the depthwise-separable dilated convolution.

Device policy: CUDA tensors run the Triton kernels; CPU tensors run them under the Triton
interpreter when TRITON_INTERPRET=1 is set (before import), and eager PyTorch otherwise.
"""
def _map_source_tree() -> None:
    """Installed, ``triton_dsd.kernels`` and ``triton_dsd.autotune_configs`` are subpackages (see
    pyproject.toml). Imported straight from a source checkout (``python -m pytest`` from the repo
    root puts it first on sys.path), they are the top-level folders kernels/ and
    autotune_configs/: map them, so the checkout works with or without an install."""
    import importlib.util
    import os
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for sub, folder in (("kernels", "kernels"), ("autotune_configs", "autotune_configs")):
        name = f"{__name__}.{sub}"
        init = os.path.join(root, folder, "__init__.py")
        if name in sys.modules or not os.path.exists(init):
            continue
        try:
            if importlib.util.find_spec(name) is not None:
                continue
        except ImportError:
            pass
        spec = importlib.util.spec_from_file_location(
            name, init, submodule_search_locations=[os.path.dirname(init)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        globals()[sub] = module


_map_source_tree()

from triton_dsd.functional import (depthwise_conv1d, depthwise_conv2d, dsd_conv1d, dsd_conv1d_step,
                                   dsd_conv2d, pointwise_conv1d, pointwise_conv2d)
from triton_dsd.varlen import conv1d_out_cu_seqlens
from triton_dsd.modules import (DepthwiseConv1d, DepthwiseConv2d, DepthwiseSeparableDilatedConv1d,
                                DepthwiseSeparableDilatedConv2d, EagerDepthwiseSeparableDilatedConv1d,
                                EagerDepthwiseSeparableDilatedConv2d, PointwiseConv1d, PointwiseConv2d,
                                SeparableChain, Bypassed)
from triton_dsd.convert import FusedSequential, convert, to_eager
from triton_dsd.compare import compare
from triton_dsd.ops import use_triton

__version__ = "0.1.0"

__all__ = [
    "depthwise_conv1d", "depthwise_conv2d", "pointwise_conv1d", "pointwise_conv2d", "dsd_conv1d",
    "dsd_conv2d", "DepthwiseConv1d", "DepthwiseConv2d", "PointwiseConv1d", "PointwiseConv2d",
    "DepthwiseSeparableDilatedConv1d", "DepthwiseSeparableDilatedConv2d",
    "EagerDepthwiseSeparableDilatedConv1d", "EagerDepthwiseSeparableDilatedConv2d", "convert",
    "to_eager", "FusedSequential", "SeparableChain", "Bypassed", "use_triton", "compare",
    "conv1d_out_cu_seqlens", "dsd_conv1d_step",
]
