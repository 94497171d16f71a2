"""Triton kernels of triton_dsd (only ``@triton.jit`` code lives here).

Installed as the subpackage ``triton_dsd.kernels``; the launch glue that calls these
kernels is in ``triton_dsd/launch.py``.
"""
