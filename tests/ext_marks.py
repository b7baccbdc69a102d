"""Skip markers shared by the tests of the compiled (C++/CUDA) backends."""

import pytest
import torch

import lvtp_kernels._ext as ext

HAVE_CPP = ext.status()["cpp"][0]
HAVE_CUDA = ext.status()["cuda"][0] and torch.cuda.is_available()
needs_cpp = pytest.mark.skipif(not HAVE_CPP, reason=f"C++ extension not built: {ext.status()['cpp'][1]}")
needs_cuda = pytest.mark.skipif(
    not HAVE_CUDA,
    reason="needs a CUDA GPU and the CUDA extension ("
    + ("no GPU" if not torch.cuda.is_available() else ext.status()["cuda"][1]) + ")",
)
