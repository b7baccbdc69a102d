"""Triton kernels of the lvtp ops, one file per op family.

Importing a family registers its ``triton`` backend with :mod:`lvtp_kernels.registry`
(CUDA tensors always; CPU tensors too when ``TRITON_INTERPRET=1``, which is how the
tests run the same kernels on a machine without a GPU).
"""
