"""The compiled clustering ops (csrc/) as backends of torch.ops.lvtp.kmeans / select /
select_tokens.

The extension modules register their own ops, ``torch.ops.lvtp_cpp.kmeans``,
``torch.ops.lvtp_cpp.select`` and ``torch.ops.lvtp_cpp.select_tokens`` (same schemas as
the ``lvtp`` ones, no validation); this module loads them, gives them fake kernels
(torch.compile / opcheck), and registers them
with :mod:`lvtp_kernels.registry` as the ``cpp`` backend (CPU tensors) and the ``cuda``
backend (CUDA tensors). ``torch.ops.lvtp.*`` keep validating first.

* ``lvtp_kernels._C``       CPU kernels + the ``lvtp_cpp`` schemas (always built)
* ``lvtp_kernels._C_cuda``  CUDA kernels (built only with a CUDA torch and nvcc)

When the extension is missing the package still imports and every op runs through
python_ref; one warning says why. ``status()`` reports what loaded, for ``lvtp info``.
"""

from __future__ import annotations

import os
import warnings
from typing import Dict, Tuple

import torch

import python_ref

from . import registry

_STATUS: Dict[str, Tuple[bool, str]] = {}


def _load() -> None:
    if os.environ.get("LVTP_DISABLE_EXT", "0").strip() not in ("", "0"):
        # e.g. a second venv with another torch beside an editable build of this one (the
        # timm tests): the built .so files belong to the other torch's ABI
        _STATUS["cpp"] = (False, "disabled by LVTP_DISABLE_EXT=1")
        _STATUS["cuda"] = (False, "disabled by LVTP_DISABLE_EXT=1")
        return
    try:
        from . import _C  # noqa: F401  (runs TORCH_LIBRARY(lvtp_cpp) / CPU impls)

        _STATUS["cpp"] = (True, "")
    except Exception as exc:  # noqa: BLE001 - a missing or broken build is reported, not raised
        _STATUS["cpp"] = (False, f"lvtp_kernels._C did not load ({type(exc).__name__}: {exc}); "
                                 "build it with `pip install --no-build-isolation -e .`")
        _STATUS["cuda"] = (False, "the C++ extension lvtp_kernels._C is missing")
        warnings.warn(f"lvtp_kernels: compiled ops unavailable, python_ref runs kmeans/select: {_STATUS['cpp'][1]}",
                      RuntimeWarning, stacklevel=3)
        return
    try:
        from . import _C_cuda  # noqa: F401  (TORCH_LIBRARY_IMPL(lvtp_cpp, CUDA))

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


def _cpp_available() -> Tuple[bool, str]:
    return _STATUS["cpp"]


def _cuda_available() -> Tuple[bool, str]:
    ok, why = _STATUS["cuda"]
    if ok and not torch.cuda.is_available():
        return False, "no CUDA device (torch.cuda.is_available() is False)"
    return ok, why


def _has_select_tokens() -> bool:
    """False for an extension built before lvtp_cpp::select_tokens existed."""
    try:
        torch.ops.lvtp_cpp.select_tokens  # noqa: B018
        return True
    except (AttributeError, RuntimeError):
        return False


def _has_op(name: str) -> bool:
    try:
        getattr(torch.ops.lvtp_cpp, name)
        return True
    except (AttributeError, RuntimeError):
        return False


def _stale(available, op: str = "select_tokens"):
    """``available`` for an op added after the first release: also unavailable when the
    built extension predates it."""

    def check() -> Tuple[bool, str]:
        ok, why = available()
        if ok and not _has_op(op):
            return False, f"lvtp_kernels._C predates lvtp_cpp::{op}; rebuild the extension"
        return ok, why

    return check


def _register_fakes() -> None:
    @torch.library.register_fake("lvtp_cpp::kmeans")
    def _kmeans_fake(x, init, iters):
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        return init.new_empty(init.shape, dtype=acc), x.new_empty(x.shape[:2], dtype=torch.int64)

    @torch.library.register_fake("lvtp_cpp::select")
    def _select_fake(tokens, ent, edge, keep_ratio, num_protected, alpha, entropy_mode, clusters, iters):
        return registry._select_outputs(tokens, keep_ratio, num_protected)

    if _has_op("attention_entropy"):
        @torch.library.register_fake("lvtp_cpp::attention_entropy")
        def _attention_entropy_fake(q, k, v, qs, scale):
            b, h, n, _ = q.shape
            return q.new_empty((b, h, n, v.shape[3])), q.new_empty((b, n, len(qs)), dtype=torch.float32)

        @torch.library.register_fake("lvtp_cpp::gather_tokens")
        def _gather_tokens_fake(x, idx):
            return x.new_empty((x.shape[0], idx.shape[1], x.shape[2]))

        @torch.library.register_fake("lvtp_cpp::reconstruct_nearest")
        def _reconstruct_nearest_fake(full, x_stage, keep_idx, prune_idx, cluster_id):
            return full.new_empty((full.shape[0], x_stage.shape[1], full.shape[2]))

        @torch.library.register_fake("lvtp_cpp::patch_edge_energy")
        def _patch_edge_energy_fake(image, patch):
            b, _, height, width = image.shape
            return image.new_empty((b, (height // patch) * (width // patch)), dtype=torch.float32)

    if not _has_select_tokens():
        return

    @torch.library.register_fake("lvtp_cpp::select_tokens")
    def _select_tokens_fake(tokens, ent, edge, keep_ratio, num_protected, alpha, entropy_mode, clusters, iters,
                            allocation):
        return registry._select_outputs(tokens, keep_ratio, num_protected)


def _kmeans(x, init, iters):
    return torch.ops.lvtp_cpp.kmeans(x, init, iters)


def _select(tokens, ent, edge, keep_ratio, num_protected, alpha, entropy_mode, clusters, iters):
    return torch.ops.lvtp_cpp.select(tokens, ent, edge, keep_ratio, num_protected, alpha, entropy_mode, clusters, iters)


def _select_tokens(tokens, ent, edge, keep_ratio, num_protected, alpha, entropy_mode, clusters, iters, allocation):
    return torch.ops.lvtp_cpp.select_tokens(
        tokens, ent, edge, keep_ratio, num_protected, alpha, entropy_mode, clusters, iters, allocation
    )


_load()
if _STATUS["cpp"][0]:
    _register_fakes()
# Registered even when unavailable: `lvtp info` then says why, and LVTP_IMPL=cpp|cuda
# raises with that reason instead of silently running python_ref.
for _op, _fn in (("kmeans", _kmeans), ("select", _select)):
    registry.register_backend(_op, "cpp", _fn, devices=("cpu",), available=_cpp_available)
    registry.register_backend(_op, "cuda", _fn, devices=("cuda",), available=_cuda_available)
registry.register_backend("select_tokens", "cpp", _select_tokens, devices=("cpu",),
                          available=_stale(_cpp_available))
registry.register_backend("select_tokens", "cuda", _select_tokens, devices=("cuda",),
                          available=_stale(_cuda_available))


def _attention_entropy(q, k, v, qs, scale):
    return torch.ops.lvtp_cpp.attention_entropy(q, k, v, list(qs), scale)


def _patch_edge_energy(image, patch):
    return torch.ops.lvtp_cpp.patch_edge_energy(image, patch)


def _reconstruct_stage(full, x_stage, keep_idx, prune_idx, cluster_id, clusters, mode):
    """The C++ kernel for the default mode "nearest"; "residual" and "frozen" (cheap
    vectorised torch code already) run python_ref."""
    if mode != "nearest":
        return python_ref.reconstruct_stage(full, x_stage, keep_idx, prune_idx, cluster_id, clusters, mode)
    if full.shape[1] == 0 and prune_idx.shape[1] > 0:  # as the reference's argmax and the Triton kernel
        raise ValueError("reconstruct_stage: mode 'nearest' needs at least one kept token when tokens are pruned")
    return torch.ops.lvtp_cpp.reconstruct_nearest(full, x_stage, keep_idx, prune_idx, cluster_id)


# CPU-only kernels (csrc/lvtp_cpu_fused.cpp); on CUDA the Triton kernels run these ops.
registry.register_backend("attention_entropy", "cpp", _attention_entropy, devices=("cpu",),
                          available=_stale(_cpp_available, "attention_entropy"))
registry.register_backend("patch_edge_energy", "cpp", _patch_edge_energy, devices=("cpu",),
                          available=_stale(_cpp_available, "patch_edge_energy"))
registry.register_backend("reconstruct_stage", "cpp", _reconstruct_stage, devices=("cpu",),
                          available=_stale(_cpp_available, "reconstruct_nearest"))
registry.register_backend("gather_tokens", "cpp", lambda x, idx: torch.ops.lvtp_cpp.gather_tokens(x, idx),
                          devices=("cpu",), available=_stale(_cpp_available, "gather_tokens"))
