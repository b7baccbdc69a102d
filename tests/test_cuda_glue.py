"""csrc/bind_cuda.cpp (the ATen glue and bindings of the CUDA kernels) compiles against this torch's headers.

A CPU machine cannot build the CUDA extension (its torch has no CUDA libraries), so without
this check the glue would first be compiled on a lent GPU. The CPU wheel ships the c10/cuda
headers but not the one CMake generates (c10/cuda/impl/cuda_cmake_macros.h): a stand-in
defines its single macro. `g++ -fsyntax-only` then parses and instantiates everything, with
the CUDA runtime headers beside the local nvcc. The .cu files are compiled by
scripts/check_cuda_compile.sh and run under the emulator in tests/test_cuda_simt.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parent.parent


def _cuda_include():
    nvcc = shutil.which("nvcc")
    homes = [os.environ.get("CUDA_HOME"), os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None,
             "/usr/local/cuda"]
    for h in homes:
        if h and os.path.exists(os.path.join(h, "include", "cuda_runtime_api.h")):
            return os.path.join(h, "include")
    return None


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_cuda_glue_compiles(tmp_path):
    inc = _cuda_include()
    if inc is None:
        pytest.skip("no CUDA runtime headers (nvcc's toolkit) on this machine")
    torch_inc = cpp_extension.include_paths()
    if not any(os.path.exists(os.path.join(p, "c10", "cuda", "CUDAGuard.h")) for p in torch_inc):
        pytest.skip("this torch ships no c10/cuda headers")
    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    cmd = ["g++", "-std=c++20", "-fsyntax-only", "-Wall", "-Werror=return-type", f"-I{ROOT / 'csrc'}", f"-I{tmp_path}",
           *(f"-I{p}" for p in torch_inc), f"-I{inc}", f"-I{sysconfig.get_paths()['include']}",
           str(ROOT / "csrc" / "bind_cuda.cpp")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr[-5000:]}"
    assert "error" not in r.stderr
