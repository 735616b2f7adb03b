"""Warp + colour kernels: pure array code (numpy, numba, torch), never importing the engine.

Shipped as ``fastssl.kernels`` (setuptools maps this folder there), so it never collides with
the unrelated PyPI package called ``kernels``.
"""
