"""Triton kernels of triton_dsd (only ``@triton.jit`` code lives here).

Installed as the subpackage ``triton_dsd.kernels``. ``_common.py`` holds the jit helpers the
kernels share; ``triton_dsd/registry.py`` lists the kernels and ``triton_dsd/launchers.py``
launches them.
"""
