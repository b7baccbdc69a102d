"""The compiled kernels of csrc/: loading, and why not.

* ``lvtp_kernels._C``       C++ CPU kernels (always built): the ``cpp`` backend
* ``lvtp_kernels._C_cuda``  CUDA kernels (built only with a CUDA torch and nvcc): the ``cuda`` backend

Both are plain extension modules whose functions take the arguments of the ``lvtp`` op
they serve, in schema order, without validation (the op validates first); they define no
op namespace of their own. Which op uses which function is written in the op's spec
(lvtp_kernels/ops/<family>.py, ``registry.compiled_backend``).

When the extension is missing the package still imports and every op runs through its
other backends; one warning says why. ``status()`` reports what loaded, for ``lvtp info``.
``LVTP_DISABLE_EXT=1`` skips loading (e.g. a second venv with another torch beside an
editable build of this one: the built .so files belong to the other torch's ABI).
"""

from __future__ import annotations

import importlib
import os
import warnings
from typing import Dict, Tuple

import torch

_MODULES = {"cpp": "lvtp_kernels._C", "cuda": "lvtp_kernels._C_cuda"}
_STATUS: Dict[str, Tuple[bool, str]] = {}
_LOADED: Dict[str, object] = {}


def _load() -> None:
    if os.environ.get("LVTP_DISABLE_EXT", "0").strip() not in ("", "0"):
        for backend in _MODULES:
            _STATUS[backend] = (False, "disabled by LVTP_DISABLE_EXT=1")
        return
    try:
        _LOADED["cpp"] = importlib.import_module(_MODULES["cpp"])
        _STATUS["cpp"] = (True, "")
    except Exception as exc:  # noqa: BLE001 - a missing or broken build is reported, not raised
        _STATUS["cpp"] = (False, f"lvtp_kernels._C did not load ({type(exc).__name__}: {exc}); "
                                 "build it with `pip install --no-build-isolation -e .`")
        warnings.warn(f"lvtp_kernels: compiled ops unavailable, other backends run them: {_STATUS['cpp'][1]}",
                      RuntimeWarning, stacklevel=3)
    try:
        _LOADED["cuda"] = importlib.import_module(_MODULES["cuda"])
        _STATUS["cuda"] = (True, "")
    except ImportError as exc:
        if torch.version.cuda is None:
            why = f"torch {torch.__version__} is a CPU build (the CUDA ops were not built)"
        elif "_C_cuda" in str(exc) and "No module" in str(exc):
            why = "the CUDA ops were not built (no nvcc at build time, or LVTP_SKIP_CUDA=1)"
        else:
            why = f"lvtp_kernels._C_cuda did not load ({exc})"
        _STATUS["cuda"] = (False, why)
    except Exception as exc:  # noqa: BLE001
        _STATUS["cuda"] = (False, f"lvtp_kernels._C_cuda did not load ({type(exc).__name__}: {exc})")


def status() -> Dict[str, Tuple[bool, str]]:
    """{"cpp": (loaded, why not), "cuda": (loaded, why not)}."""
    return dict(_STATUS)


def module(backend: str):
    """The loaded extension module of ``backend`` ("cpp" or "cuda")."""
    mod = _LOADED.get(backend)
    if mod is None:
        raise RuntimeError(f"lvtp: the {backend} backend is unavailable: {_STATUS[backend][1]}")
    return mod


def available(backend: str, fn: str) -> Tuple[bool, str]:
    """(usable now, why not) for the kernel ``fn`` of ``backend``'s module."""
    ok, why = _STATUS[backend]
    if not ok:
        return ok, why
    if not hasattr(_LOADED[backend], fn):
        return False, f"{_MODULES[backend]} has no kernel {fn!r}; rebuild the extension"
    if backend == "cuda" and not torch.cuda.is_available():
        return False, "no CUDA device (torch.cuda.is_available() is False)"
    return True, ""


_load()
