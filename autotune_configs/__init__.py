"""Tuned kernel configs shipped with triton_dsd (installed as ``triton_dsd.autotune_configs``).

One JSON file per kernel, device and dtype: ``<kernel>/device_name=<GPU>,dtype=<dtype>.json``,
written by ``triton-dsd tune``; see ``triton_dsd/tuning.py`` for the format and the lookup.
"""
