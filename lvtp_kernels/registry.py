"""The ``torch.ops.lvtp`` op registry: schemas, validation, fake kernels and dispatch.

Every schema of the spec is defined here once. Each op gets one composite kernel that
validates its inputs (``_validate``) and hands them to a *backend* picked by the
dispatch policy:

* backends are plain callables registered per op with :func:`register_backend`
  (``ref`` = python_ref, registered for every device; later: ``triton``, ``cpp``, ``cuda``);
* ``LVTP_IMPL=auto`` (default) takes, per device, the first available backend in
  ``AUTO_ORDER``; ``LVTP_IMPL=<backend>`` forces that backend for every op that has it
  (the other ops keep their automatic choice); a forced backend that is registered but
  unavailable raises, it never falls back silently.

Fake kernels (``register_fake``) run the same validator on shapes only, so ops work
under ``torch.compile(fullgraph=True)`` and pass ``torch.library.opcheck``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

import python_ref

from . import _validate as V

NAMESPACE = "lvtp"

# The op contract of the spec, one schema per op, defined nowhere else.
SCHEMAS: Dict[str, str] = {
    "tsallis_entropy": "(Tensor attn, float[] qs) -> Tensor",
    "attention_entropy": "(Tensor q, Tensor k, Tensor v, float[] qs, float scale) -> (Tensor out, Tensor ent)",
    "patch_edge_energy": "(Tensor image, int patch) -> Tensor",
    "kmeans": "(Tensor x, Tensor init, int iters) -> (Tensor centroids, Tensor assign)",
    "select": (
        "(Tensor tokens, Tensor ent, Tensor? edge, float keep_ratio, int num_protected, float alpha, "
        "str entropy_mode, int clusters, int iters) -> (Tensor keep_idx, Tensor prune_idx, Tensor cluster_id)"
    ),
    "prune": (
        "(Tensor tokens, Tensor attn, Tensor? edge=None, float keep_ratio=0.7, int num_protected=1, "
        "float[] qs=[0.5, 1.0, 2.0, 3.0], float alpha=0.5, str entropy_mode=\"low\", int clusters=8, "
        "int iters=10) -> (Tensor kept, Tensor keep_idx, Tensor prune_idx, Tensor cluster_id)"
    ),
    "gather_tokens": "(Tensor x, Tensor idx) -> Tensor",
    "scatter_tokens": "(Tensor full, Tensor x, Tensor idx) -> Tensor",
    # Not in the spec's list. select with a choice of budget allocation ("ranked" is
    # the spec's step 5.3, select's behaviour; "proportional": per-cluster shares).
    "select_tokens": (
        "(Tensor tokens, Tensor ent, Tensor? edge, float keep_ratio, int num_protected, float alpha, "
        "str entropy_mode, int clusters, int iters, str allocation) -> (Tensor keep_idx, Tensor prune_idx, "
        "Tensor cluster_id)"
    ),
    # Step 7 for one stage, so that a fused kernel can own it.
    "reconstruct_stage": (
        "(Tensor full, Tensor x_stage, Tensor keep_idx, Tensor prune_idx, Tensor cluster_id, int clusters, "
        "str mode) -> Tensor"
    ),
}
OP_NAMES: Tuple[str, ...] = tuple(SCHEMAS)

BACKENDS: Tuple[str, ...] = ("ref", "triton", "cpp", "cuda")
# Automatic choice, per device type, in order of preference.
AUTO_ORDER: Dict[str, Tuple[str, ...]] = {"cuda": ("cuda", "triton", "ref"), "cpu": ("cpp", "ref")}
DEFAULT_AUTO_ORDER: Tuple[str, ...] = ("ref",)


@dataclass
class Backend:
    fn: Callable
    devices: Optional[Tuple[str, ...]]  # device types it runs on; None: every device
    available: Callable[[], Tuple[bool, str]]  # (usable now, why not)

    def runs_on(self, device_type: str) -> bool:
        return self.devices is None or device_type in self.devices


_BACKENDS: Dict[str, Dict[str, Backend]] = {name: {} for name in OP_NAMES}


def _always() -> Tuple[bool, str]:
    return True, ""


def register_backend(
    op: str,
    backend: str,
    fn: Callable,
    devices: Optional[Sequence[str]] = None,
    available: Callable[[], Tuple[bool, str]] = _always,
) -> None:
    """Make ``fn`` (the op's arguments in schema order) a backend of ``op``."""
    if op not in _BACKENDS:
        raise ValueError(f"register_backend: unknown op {op!r}; ops are {OP_NAMES}")
    if backend not in BACKENDS:
        raise ValueError(f"register_backend: unknown backend {backend!r}; backends are {BACKENDS}")
    _BACKENDS[op][backend] = Backend(fn, None if devices is None else tuple(devices), available)
    if op in _PRUNE_PARTS and backend != "ref":
        _register_prune_composite(backend)


# prune = tsallis_entropy -> select -> gather_tokens. A backend that has any of the three
# makes prune a composite for that backend: each part then runs on its own chosen
# backend (so LVTP_IMPL=triton runs the Triton parts and keeps select's default).
_PRUNE_PARTS = ("tsallis_entropy", "select", "gather_tokens")


def _prune_composite(tokens, attn, edge, keep_ratio, num_protected, qs, alpha, entropy_mode, clusters, iters):
    dev = tokens.device
    ent = _run("tsallis_entropy", dev, attn, qs)
    keep_idx, prune_idx, cluster_id = _run(
        "select", dev, tokens, ent, edge, keep_ratio, num_protected, alpha, entropy_mode, clusters, iters
    )
    return _run("gather_tokens", dev, tokens, keep_idx), keep_idx, prune_idx, cluster_id


def _register_prune_composite(backend: str) -> None:
    parts = [_BACKENDS[op][backend] for op in _PRUNE_PARTS if backend in _BACKENDS[op]]
    devices = None if any(b.devices is None for b in parts) else tuple(sorted({d for b in parts for d in b.devices}))

    def available() -> Tuple[bool, str]:
        whys = []
        for b in parts:
            ok, why = b.available()
            if ok:
                return True, ""
            whys.append(why)
        return False, "; ".join(whys)

    _BACKENDS["prune"][backend] = Backend(_prune_composite, devices, available)


def requested_impl() -> str:
    """The ``LVTP_IMPL`` setting: ``auto`` or one of ``BACKENDS``."""
    impl = os.environ.get("LVTP_IMPL", "auto").strip().lower() or "auto"
    if impl != "auto" and impl not in BACKENDS:
        raise ValueError(f"LVTP_IMPL must be 'auto' or one of {BACKENDS}, got {impl!r}")
    return impl


def ops_with_backend(backend: str, device_type: str) -> List[str]:
    """The ops that have ``backend`` registered for ``device_type``."""
    return [op for op in OP_NAMES if backend in _BACKENDS[op] and _BACKENDS[op][backend].runs_on(device_type)]


_WARNED_UNUSED: set = set()


def choose_backend(op: str, device_type: str, warn: bool = True) -> str:
    """The backend that runs ``op`` on ``device_type`` under the current ``LVTP_IMPL``.

    A forced backend runs every op that has it on that device and raises if it is
    unavailable; ops without it keep the automatic choice. Forcing a backend that no op
    has on that device warns once (a typo or a missing build, not a silent no-op)."""
    impl = requested_impl()
    backends = _BACKENDS[op]
    forced = backends.get(impl) if impl != "auto" else None
    if forced is not None and forced.runs_on(device_type):
        ok, why = forced.available()
        if not ok:
            raise RuntimeError(f"lvtp.{op}: LVTP_IMPL={impl} was requested but the {impl} backend is unavailable: {why}")
        return impl
    if warn and impl != "auto" and (impl, device_type) not in _WARNED_UNUSED and not ops_with_backend(impl, device_type):
        _WARNED_UNUSED.add((impl, device_type))
        warnings.warn(
            f"LVTP_IMPL={impl}: no lvtp op has a {impl} backend for {device_type} tensors; "
            "every op keeps its automatic choice (see `lvtp info`)",
            stacklevel=2,
        )
    for name in AUTO_ORDER.get(device_type, DEFAULT_AUTO_ORDER):
        b = backends.get(name)
        if b is not None and b.runs_on(device_type) and b.available()[0]:
            return name
    raise RuntimeError(f"lvtp.{op}: no backend runs on device type {device_type!r}")


def backend_table(device_types: Sequence[str] = ("cpu", "cuda")) -> List[dict]:
    """Per op: the backend chosen per device and why each known backend is on or off."""
    rows = []
    for op in OP_NAMES:
        row = {"op": op, "chosen": {}, "backends": {}}
        for dev in device_types:
            try:
                row["chosen"][dev] = choose_backend(op, dev, warn=False)  # a report, not a use
            except (RuntimeError, ValueError) as exc:
                row["chosen"][dev] = f"error: {exc}"
        for name in BACKENDS:
            b = _BACKENDS[op].get(name)
            if b is None:
                row["backends"][name] = f"off: no {name} kernel for this op"
            else:
                ok, why = b.available()
                where = "all devices" if b.devices is None else "/".join(b.devices)
                row["backends"][name] = f"on ({where})" if ok else f"off: {why}"
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- value checks
# Shapes, dtypes, devices and scalars are checked on every call. The data checks
# (NaN/Inf, probability rows, index ranges and duplicates) read the data, which on a GPU
# is a device-to-host sync per check: they run on every call of a public op, except
# * inside ``trusted_inputs()``: a caller whose tensors come from lvtp ops themselves (the
#   patched models' forward) vouches for them;
# * while a CUDA graph is being captured (a sync is illegal there);
# * with ``LVTP_CHECK_VALUES=0`` in the environment (the user opts out globally).
_TRUST = threading.local()


def _env_checks_values() -> bool:
    v = os.environ.get("LVTP_CHECK_VALUES", "1").strip().lower()
    if v not in ("0", "1", "false", "true", "no", "yes", "off", "on", ""):
        raise ValueError(f"LVTP_CHECK_VALUES must be 0 or 1, got {v!r}")
    return v not in ("0", "false", "no", "off")


def _check_values() -> bool:
    if getattr(_TRUST, "depth", 0) > 0:
        return False
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return False
    return _env_checks_values()


@contextlib.contextmanager
def trusted_inputs():
    """Within this block lvtp ops skip their data checks (shape/dtype/device checks stay).

    For callers that pass tensors produced by lvtp ops (indices from ``select``, features of
    the model's own blocks): the checks would each cost a device sync on a GPU."""
    _TRUST.depth = getattr(_TRUST, "depth", 0) + 1
    try:
        yield
    finally:
        _TRUST.depth -= 1


def _run(op: str, device: torch.device, *args):
    return _BACKENDS[op][choose_backend(op, device.type)].fn(*args)


# --------------------------------------------------------------------------- definitions
for _name, _schema in SCHEMAS.items():
    torch.library.define(f"{NAMESPACE}::{_name}", _schema)

for _name in OP_NAMES:
    register_backend(_name, "ref", getattr(python_ref, _name))


def _impl(name: str):
    return torch.library.impl(f"{NAMESPACE}::{name}", "CompositeExplicitAutograd")


def _fake(name: str):
    return torch.library.register_fake(f"{NAMESPACE}::{name}")


# The dispatcher drops trailing arguments equal to their schema default: kernels with
# defaults in the schema carry the same defaults.
_DEFAULT_QS = python_ref.ops.DEFAULT_QS


@_impl("tsallis_entropy")
def _tsallis_entropy(attn, qs):
    V.check_tsallis_entropy(attn, qs, values=_check_values())
    return _run("tsallis_entropy", attn.device, attn, qs)


@_fake("tsallis_entropy")
def _tsallis_entropy_fake(attn, qs):
    V.check_tsallis_entropy(attn, qs, values=False)
    b, _, n, _ = attn.shape
    return attn.new_empty((b, n, len(qs)), dtype=torch.float32)


@_impl("attention_entropy")
def _attention_entropy(q, k, v, qs, scale):
    V.check_attention_entropy(q, k, v, qs, scale, values=_check_values())
    return _run("attention_entropy", q.device, q, k, v, qs, scale)


@_fake("attention_entropy")
def _attention_entropy_fake(q, k, v, qs, scale):
    V.check_attention_entropy(q, k, v, qs, scale, values=False)
    b, h, n, _ = q.shape
    out = q.new_empty((b, h, n, v.shape[3]))
    return out, q.new_empty((b, n, len(qs)), dtype=torch.float32)


@_impl("patch_edge_energy")
def _patch_edge_energy(image, patch):
    V.check_patch_edge_energy(image, patch, values=_check_values())
    return _run("patch_edge_energy", image.device, image, patch)


@_fake("patch_edge_energy")
def _patch_edge_energy_fake(image, patch):
    V.check_patch_edge_energy(image, patch, values=False)
    b, _, height, width = image.shape
    return image.new_empty((b, (height // patch) * (width // patch)), dtype=torch.float32)


@_impl("kmeans")
def _kmeans(x, init, iters):
    V.check_kmeans(x, init, iters, values=_check_values())
    return _run("kmeans", x.device, x, init, iters)


@_fake("kmeans")
def _kmeans_fake(x, init, iters):
    V.check_kmeans(x, init, iters, values=False)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return init.new_empty(init.shape, dtype=acc), x.new_empty(x.shape[:2], dtype=torch.int64)


@_impl("select")
def _select(tokens, ent, edge, keep_ratio, num_protected, alpha, entropy_mode, clusters, iters):
    args = (tokens, ent, edge, keep_ratio, num_protected, alpha, entropy_mode, clusters, iters)
    V.check_select(*args, values=_check_values())
    return _run("select", tokens.device, *args)


def _budget(n, num_protected: int, keep_ratio: float):
    """python_ref.ops.budget written with sym ops, so that a symbolic N (dynamic shapes)
    stays symbolic: truncation is floor here since keep_ratio * (N - P) + 0.5 > 0."""
    return torch.sym_max(1, torch.sym_int(keep_ratio * (n - num_protected) + 0.5))


def _select_outputs(tokens, keep_ratio, num_protected):
    b, n = tokens.shape[:2]
    kept = num_protected + _budget(n, num_protected, keep_ratio)
    return (
        tokens.new_empty((b, kept), dtype=torch.int64),
        tokens.new_empty((b, n - kept), dtype=torch.int64),
        tokens.new_empty((b, n), dtype=torch.int32),
    )


@_impl("select_tokens")
def _select_tokens(tokens, ent, edge, keep_ratio, num_protected, alpha, entropy_mode, clusters, iters, allocation):
    args = (tokens, ent, edge, keep_ratio, num_protected, alpha, entropy_mode, clusters, iters, allocation)
    V.check_select_tokens(*args, values=_check_values())
    return _run("select_tokens", tokens.device, *args)


@_fake("select_tokens")
def _select_tokens_fake(tokens, ent, edge, keep_ratio, num_protected, alpha, entropy_mode, clusters, iters, allocation):
    V.check_select_tokens(tokens, ent, edge, keep_ratio, num_protected, alpha, entropy_mode, clusters, iters, allocation,
                          values=False)
    return _select_outputs(tokens, keep_ratio, num_protected)


@_fake("select")
def _select_fake(tokens, ent, edge, keep_ratio, num_protected, alpha, entropy_mode, clusters, iters):
    V.check_select(tokens, ent, edge, keep_ratio, num_protected, alpha, entropy_mode, clusters, iters, values=False)
    return _select_outputs(tokens, keep_ratio, num_protected)


@_impl("prune")
def _prune(
    tokens, attn, edge=None, keep_ratio=0.7, num_protected=1, qs=_DEFAULT_QS, alpha=0.5, entropy_mode="low",
    clusters=8, iters=10):
    args = (tokens, attn, edge, keep_ratio, num_protected, list(qs), alpha, entropy_mode, clusters, iters)
    V.check_prune(*args, values=_check_values())
    return _run("prune", tokens.device, *args)


@_fake("prune")
def _prune_fake(
    tokens, attn, edge=None, keep_ratio=0.7, num_protected=1, qs=_DEFAULT_QS, alpha=0.5, entropy_mode="low",
    clusters=8, iters=10):
    V.check_prune(tokens, attn, edge, keep_ratio, num_protected, qs, alpha, entropy_mode, clusters, iters, values=False)
    keep_idx, prune_idx, cluster_id = _select_outputs(tokens, keep_ratio, num_protected)
    kept = tokens.new_empty((tokens.shape[0], keep_idx.shape[1], tokens.shape[2]))
    return kept, keep_idx, prune_idx, cluster_id


@_impl("gather_tokens")
def _gather_tokens(x, idx):
    V.check_gather_tokens(x, idx, values=_check_values())
    return _run("gather_tokens", x.device, x, idx)


@_fake("gather_tokens")
def _gather_tokens_fake(x, idx):
    V.check_gather_tokens(x, idx, values=False)
    return x.new_empty((x.shape[0], idx.shape[1], x.shape[2]))


@_impl("scatter_tokens")
def _scatter_tokens(full, x, idx):
    V.check_scatter_tokens(full, x, idx, values=_check_values())
    return _run("scatter_tokens", full.device, full, x, idx)


@_fake("scatter_tokens")
def _scatter_tokens_fake(full, x, idx):
    V.check_scatter_tokens(full, x, idx, values=False)
    return torch.empty_like(full, memory_format=torch.contiguous_format)


@_impl("reconstruct_stage")
def _reconstruct_stage(full, x_stage, keep_idx, prune_idx, cluster_id, clusters, mode):
    args = (full, x_stage, keep_idx, prune_idx, cluster_id, clusters, mode)
    V.check_reconstruct_stage(*args, values=_check_values())
    return _run("reconstruct_stage", full.device, *args)


@_fake("reconstruct_stage")
def _reconstruct_stage_fake(full, x_stage, keep_idx, prune_idx, cluster_id, clusters, mode):
    V.check_reconstruct_stage(full, x_stage, keep_idx, prune_idx, cluster_id, clusters, mode, values=False)
    return full.new_empty((full.shape[0], x_stage.shape[1], full.shape[2]))
