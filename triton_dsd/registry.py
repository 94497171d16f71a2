"""The kernel families: one entry per tuned kernel, the single list the launchers, the config
store, ``tune``, ``inspect``, ``problems`` and the tests read.

Each :class:`Family` holds the name (the store's folder name), the ``@triton.jit`` function,
the block names its configs set, the key function (problem sizes -> key fields, ``keys.py``),
and the default-config and config-space functions of those fields (``configs.py``).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Tuple

from triton_dsd import configs, keys
from triton_dsd.kernels import depthwise, depthwise_wgrad, fused, pointwise, reduce, step

Fields = Dict[str, object]


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    kernel: object  # the @triton.jit function
    blocks: Tuple[str, ...]
    key: Callable[..., Fields]
    default: Callable[[Fields, int], dict]
    space: Callable[[Fields, int], List[dict]]
    pipelined: bool  # num_stages is part of its configs

    @property
    def kernel_name(self) -> str:
        return self.kernel.fn.__name__

    @property
    def config_keys(self) -> Tuple[str, ...]:
        """Every launch option a config of this family sets."""
        return self.blocks + ("num_warps",) + (("num_stages",) if self.pipelined else ())


#: forward / input gradient: row segments (BLOCK_R) x outputs per segment (BLOCK_W, a register
#: window along W) x channels (BLOCK_C)
_DW_BLOCKS = ("BLOCK_R", "BLOCK_W", "BLOCK_C")
#: the weight gradient tiles taps (BLOCK_T) x one row's columns (BLOCK_W) x channels (BLOCK_C)
_DW_WGRAD_BLOCKS = ("BLOCK_T", "BLOCK_W", "BLOCK_C")
_GEMM_BLOCKS = ("BLOCK_P", "BLOCK_M", "BLOCK_K")

FAMILIES: Dict[str, Family] = {f.name: f for f in (
    Family("depthwise_fwd", depthwise.depthwise_fwd_kernel, _DW_BLOCKS, keys.depthwise_key,
           configs.depthwise_default, configs.depthwise_space, False),
    Family("depthwise_bwd_input", depthwise.depthwise_bwd_input_kernel, _DW_BLOCKS,
           keys.depthwise_key, configs.depthwise_bwd_input_default, configs.depthwise_space,
           False),
    Family("depthwise_bwd_weight", depthwise_wgrad.depthwise_bwd_weight_kernel,
           _DW_WGRAD_BLOCKS, keys.depthwise_key, configs.depthwise_bwd_weight_default,
           configs.depthwise_bwd_weight_space, False),
    # the input gradient of a 1x1 conv is this GEMM on W^T: it shares the family
    Family("pointwise_fwd", pointwise.pointwise_fwd_kernel, _GEMM_BLOCKS, keys.gemm_key,
           configs.pointwise_default, configs.pointwise_space, True),
    Family("pointwise_bwd_weight", pointwise.pointwise_bwd_weight_kernel, _GEMM_BLOCKS,
           keys.gemm_key, configs.pointwise_bwd_weight_default,
           configs.pointwise_bwd_weight_space, True),
    Family("dsd_fwd", fused.dsd_fwd_kernel, _GEMM_BLOCKS, keys.dsd_key, configs.fused_default,
           configs.fused_space, True),
)}

#: the split-reduction finish: not tuned (its tile is fixed by the launcher)
FINISH_KERNEL = reduce.splitk_reduce_kernel
#: the decode step (one frame of the causal layer): not tuned (``launchers.step_config``)
STEP_KERNEL = step.dsd_step_kernel

#: every @triton.jit kernel the package launches
KERNELS = tuple(f.kernel for f in FAMILIES.values()) + (FINISH_KERNEL, STEP_KERNEL)
KERNEL_NAMES = tuple(k.fn.__name__ for k in KERNELS)

_BY_KERNEL = {f.kernel_name: f for f in FAMILIES.values()}


def family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown kernel family {name!r}; known: {sorted(FAMILIES)}") from None


def family_of_kernel(kernel_name: str) -> Optional[Family]:
    """The tuned family a kernel belongs to (None for the untuned finish kernel)."""
    return _BY_KERNEL.get(kernel_name)
