"""Build script. Package metadata lives in pyproject.toml.

Compiled kernels (csrc/), as two pybind11 extension modules of plain functions. They
register no ops: the only op namespace is ``torch.ops.lvtp``, defined in Python, whose
dispatch policy (validation, the ``LVTP_IMPL`` backend choice) calls these kernels as the
"cpp" / "cuda" backends through lvtp_kernels/_ext.py:

* ``lvtp_kernels._C``       C++ CPU kernels, always built (torch.utils.cpp_extension):
  ``kmeans``, ``select``, ``attention_entropy``, ``patch_edge_energy``, ``gather_tokens``,
  ``reconstruct_nearest``. One source per op family (csrc/select_cpu.cpp, attention_cpu.cpp,
  edge_cpu.cpp, tokens_cpu.cpp) on light per-operator ATen headers; the bindings
  (csrc/bind_cpu.cpp) are the only TU with <torch/extension.h>.
* ``lvtp_kernels._C_cuda``  CUDA kernels ``kmeans`` and ``select`` (csrc/kmeans_cuda.cu,
  select_cuda.cu: CUDA runtime only; csrc/bind_cuda.cpp: ATen glue + bindings), built when
  torch is a CUDA build and nvcc is found (``CUDA_HOME`` overrides where to look).
  Independent of ``_C``.

Switches: ``LVTP_SKIP_CUDA=1`` never builds the CUDA part; ``LVTP_FORCE_CUDA=1`` builds it
or fails loudly (also without a visible GPU). ``MAX_JOBS`` limits parallel compiles.
``TORCH_CUDA_ARCH_LIST`` picks GPU architectures (default: the visible GPUs, else 9.0+PTX).
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = "csrc"


def _say(msg: str) -> None:
    print(f"lvtp setup: {msg}", file=sys.stderr, flush=True)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _find_nvcc(cpp_extension) -> tuple:
    """(nvcc path or None, why not)."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or cpp_extension.CUDA_HOME
    candidates = []
    if home:
        candidates.append(os.path.join(home, "bin", "nvcc"))
    which = shutil.which("nvcc")
    if which:
        candidates.append(which)
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c, ""
    return None, f"nvcc not found (CUDA_HOME={home!r}, PATH has no nvcc)"


def _extra_cuda_includes(nvcc: str) -> list:
    """Header dirs to add when the toolkit beside nvcc lacks the CUDA runtime headers
    (pip-installed NVIDIA wheels such as nvidia/cu13/include carry them)."""
    home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    if os.path.isfile(os.path.join(home, "include", "cuda_runtime_api.h")):
        return []
    found = []
    for sp in sys.path:
        for pattern in ("nvidia/cu*/include", "nvidia/cuda_runtime/include", "nvidia/cuda_nvcc/include"):
            for d in sorted(glob.glob(os.path.join(sp, pattern))):
                if os.path.isfile(os.path.join(d, "cuda_runtime_api.h")) and d not in found:
                    found.append(d)
    if found:
        _say(f"CUDA runtime headers not beside nvcc; adding {found}")
    else:
        _say("warning: cuda_runtime_api.h not found beside nvcc nor in nvidia/* wheels; the CUDA build may fail")
    return found


def _extensions():
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as exc:  # e.g. an isolated build without torch: pure Python package
        _say(f"torch is not importable ({exc}); building WITHOUT the compiled ops (python_ref runs everything)")
        return [], {}

    # torch >= 2.10 headers are C++20 (default member initialisers of bit-fields)
    std = "-std=c++20" if tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 10) else "-std=c++17"
    cxx = ["-O3", std, "-ffp-contract=off", "-fno-math-errno"]
    if sys.platform != "win32":
        cxx += ["-fopenmp"] if sys.platform != "darwin" else []
    ldflags = ["-fopenmp"] if sys.platform.startswith("linux") else []
    common = dict(include_dirs=[os.path.join(HERE, CSRC)])
    # kernels first (the largest TU, select_cpu.cpp, starts first under MAX_JOBS), bindings last
    cpu_sources = [f"{CSRC}/{name}.cpp" for name in ("select_cpu", "select_fast_cpu", "attention_cpu", "edge_cpu", "tokens_cpu", "bind_cpu")]
    exts = [
        cpp_extension.CppExtension(
            "lvtp_kernels._C", cpu_sources, extra_compile_args={"cxx": cxx}, extra_link_args=ldflags, **common
        )
    ]

    skip, force = _flag("LVTP_SKIP_CUDA"), _flag("LVTP_FORCE_CUDA")
    if skip and force:
        raise RuntimeError("lvtp setup: LVTP_SKIP_CUDA=1 and LVTP_FORCE_CUDA=1 contradict each other")
    cuda_why = ""
    if skip:
        cuda_why = "LVTP_SKIP_CUDA=1"
    elif torch.version.cuda is None:
        cuda_why = f"torch {torch.__version__} is not a CUDA build"
    else:
        nvcc, cuda_why = _find_nvcc(cpp_extension)
        if nvcc is not None:
            os.environ.setdefault("CUDA_HOME", os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
            if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
                os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0+PTX"
            nvcc_flags = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo"]
            exts.append(
                cpp_extension.CUDAExtension(
                    "lvtp_kernels._C_cuda",
                    [f"{CSRC}/bind_cuda.cpp", f"{CSRC}/kmeans_cuda.cu", f"{CSRC}/select_cuda.cu", f"{CSRC}/select_fast_cuda.cu"],
                    extra_compile_args={"cxx": ["-O3", std], "nvcc": nvcc_flags},
                    include_dirs=[os.path.join(HERE, CSRC)] + _extra_cuda_includes(nvcc),
                )
            )
            cuda_why = ""
    if cuda_why and force:
        raise RuntimeError(f"lvtp setup: LVTP_FORCE_CUDA=1 but the CUDA ops cannot be built: {cuda_why}")
    built = "C++ CPU ops (lvtp_kernels._C)" + ("" if cuda_why else " + CUDA ops (lvtp_kernels._C_cuda)")
    _say(f"building {built}" + (f"; CUDA skipped: {cuda_why}" if cuda_why else ""))
    return exts, {"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=False)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
