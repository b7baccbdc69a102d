"""Generic dispatch of the ``torch.ops.lvtp`` ops: nothing here knows any one op.

Each op is described once, in its family module under :mod:`lvtp_kernels.ops`, by an
:class:`OpSpec` (schema, input check, fake kernel, backends); :func:`define` turns the
spec into a ``torch.library`` op with

* one ``CompositeExplicitAutograd`` kernel: fill the schema's defaults, run the check
  (with the data checks unless the caller is trusted, see below), then call the backend
  the policy picks;
* one fake kernel: the same check on shapes only, then the spec's fake (so the ops work
  under ``torch.compile(fullgraph=True)`` and pass ``torch.library.opcheck``).

Backends are plain callables taking the op's arguments in schema order: ``ref``
(python_ref, every device) and, per op, ``triton``, ``cpp``, ``cuda``. The policy:
``LVTP_IMPL=auto`` (default) takes, per device type, the first available backend in
``AUTO_ORDER``; ``LVTP_IMPL=<backend>`` forces that backend for every op that has it on
that device (the other ops keep their automatic choice), and a forced backend that is
unavailable raises, it never falls back silently.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

NAMESPACE = "lvtp"
BACKENDS: Tuple[str, ...] = ("ref", "triton", "cpp", "cuda")
# Automatic choice, per device type, in order of preference.
AUTO_ORDER: Dict[str, Tuple[str, ...]] = {"cuda": ("cuda", "triton", "ref"), "cpu": ("cpp", "ref")}
DEFAULT_AUTO_ORDER: Tuple[str, ...] = ("ref",)


def _always() -> Tuple[bool, str]:
    return True, ""


@dataclass
class Backend:
    fn: Callable
    devices: Optional[Tuple[str, ...]] = None  # device types it runs on; None: every device
    available: Callable[[], Tuple[bool, str]] = _always  # (usable now, why not)

    def runs_on(self, device_type: str) -> bool:
        return self.devices is None or device_type in self.devices


@dataclass
class OpSpec:
    """Everything about one op. ``check(*args, values=bool)`` raises ValueError naming the
    argument; ``fake(*args)`` returns empty outputs of the right shapes and dtypes;
    ``backends`` maps backend names to :class:`Backend` (``ref`` is required).
    ``parts``: for a composite op, the ops it is made of; a backend that implements any
    part then runs the op as ``compose(run, *args)``, each part on its own choice."""

    name: str
    schema: str
    check: Callable
    fake: Callable
    backends: Dict[str, Backend]
    parts: Tuple[str, ...] = ()
    compose: Optional[Callable] = None
    # per backend, a variant for trusted hot paths (Kernels): same arguments and values,
    # e.g. an output in the layout the caller needs; the op itself never uses it
    variants: Dict[str, Callable] = field(default_factory=dict)
    defaults: Tuple = field(default=(), init=False)  # (name, has_default, default) per argument


SPECS: Dict[str, OpSpec] = {}
# {op: schema}: the op contract (docs/api.md lists it), filled as the family modules define their ops
SCHEMAS: Dict[str, str] = {}


def op_names() -> Tuple[str, ...]:
    return tuple(SPECS)


# --------------------------------------------------------------------------- backends
def triton_backend(module: str, fn: str) -> Backend:
    """The Triton launcher ``lvtp_kernels.ops.<module>.<fn>``, imported on first use (so
    ``import lvtp_kernels`` does not import Triton), run with its tensors' CUDA device
    current; on CPU tensors only under ``TRITON_INTERPRET=1``."""
    from .ops._common import interpreting, triton_status

    state: Dict[str, Callable] = {}

    def run(*args):
        launcher = state.get("fn")
        if launcher is None:
            launcher = state["fn"] = getattr(importlib.import_module(f"lvtp_kernels.ops.{module}"), fn)
        dev = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
        if dev is not None and dev.type == "cuda":
            with torch.cuda.device(dev):
                return launcher(*args)
        return launcher(*args)

    run.__name__ = f"triton_{fn}"
    return Backend(run, ("cuda", "cpu") if interpreting() else ("cuda",), triton_status)


def compiled_backend(backend: str, fn: str, adapt: Optional[Callable] = None) -> Backend:
    """The function ``fn`` of the compiled module of ``backend`` ("cpp": lvtp_kernels._C on
    CPU tensors, "cuda": lvtp_kernels._C_cuda on CUDA tensors). ``adapt(kernel, *args)``,
    when given, sits between the schema arguments and the kernel."""
    from . import _ext

    def run(*args):
        kernel = getattr(_ext.module(backend), fn)
        return kernel(*args) if adapt is None else adapt(kernel, *args)

    run.__name__ = f"{backend}_{fn}"
    return Backend(run, ("cpu",) if backend == "cpp" else ("cuda",), lambda: _ext.available(backend, fn))


# --------------------------------------------------------------------------- policy
def requested_impl() -> str:
    """The ``LVTP_IMPL`` setting: ``auto`` or one of ``BACKENDS``."""
    impl = os.environ.get("LVTP_IMPL", "auto").strip().lower() or "auto"
    if impl != "auto" and impl not in BACKENDS:
        raise ValueError(f"LVTP_IMPL must be 'auto' or one of {BACKENDS}, got {impl!r}")
    return impl


@contextlib.contextmanager
def forced_impl(impl: str):
    """``LVTP_IMPL=impl`` within the block (the previous setting restored after): for
    benchmarks and tests that time or check one backend."""
    old = os.environ.get("LVTP_IMPL")
    os.environ["LVTP_IMPL"] = impl
    try:
        requested_impl()  # a bad name raises here, not at the first op
        yield
    finally:
        if old is None:
            os.environ.pop("LVTP_IMPL", None)
        else:
            os.environ["LVTP_IMPL"] = old


def _backends(op: str) -> Dict[str, Backend]:
    return SPECS[op].backends


def ops_with_backend(backend: str, device_type: str) -> List[str]:
    """The ops that have ``backend`` registered for ``device_type``."""
    return [op for op in SPECS if backend in _backends(op) and _backends(op)[backend].runs_on(device_type)]


_WARNED_UNUSED: set = set()


def choose_backend(op: str, device_type: str, warn: bool = True) -> str:
    """The backend that runs ``op`` on ``device_type`` under the current ``LVTP_IMPL``.

    A forced backend runs every op that has it on that device and raises if it is
    unavailable; ops without it keep the automatic choice. Forcing a backend that no op
    has on that device warns once (a typo or a missing build, not a silent no-op)."""
    impl = requested_impl()
    backends = _backends(op)
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
    for op in SPECS:
        row = {"op": op, "chosen": {}, "backends": {}}
        for dev in device_types:
            try:
                row["chosen"][dev] = choose_backend(op, dev, warn=False)  # a report, not a use
            except (RuntimeError, ValueError) as exc:
                row["chosen"][dev] = f"error: {exc}"
        for name in BACKENDS:
            b = _backends(op).get(name)
            if b is None:
                row["backends"][name] = f"off: no {name} kernel for this op"
            else:
                ok, why = b.available()
                where = "all devices" if b.devices is None else "/".join(b.devices)
                row["backends"][name] = f"on ({where})" if ok else f"off: {why}"
        rows.append(row)
    return rows


class Kernels:
    """The chosen backend callable of every op for one device type, each looked up once:
    ``kernels("cuda").select(*args)`` calls the backend directly, with the op's arguments
    in schema order (every one given, defaults included) and no checks. For callers on a
    hot path whose inputs are already trusted (the patched models' forward)."""

    def __init__(self, device_type: str):
        self.device_type = device_type

    def __getattr__(self, op: str) -> Callable:
        if op.startswith("_") or op not in SPECS:
            raise AttributeError(op)
        spec = SPECS[op]
        name = choose_backend(op, self.device_type, warn=False)
        fn = spec.variants.get(name) or spec.backends[name].fn  # OpSpec.variants
        setattr(self, op, fn)  # the next lookup is a plain attribute
        return fn

    def variant(self, op: str, tag: str) -> Callable:
        """``op``'s callable for a caller that accepts the variant ``"<backend>:<tag>"`` of
        the chosen backend where there is one (``tag`` "fast": the fused nearest
        reconstruction of precision "fast"), else the op's usual callable. Looked up once."""
        key = f"{op}:{tag}"
        fn = self.__dict__.get(key)
        if fn is None:
            name = choose_backend(op, self.device_type, warn=False)
            fn = self.__dict__[key] = SPECS[op].variants.get(f"{name}:{tag}") or getattr(self, op)
        return fn


_GENERATION = [0]  # bumped when an op or backend is added: resolved tables go stale
_RESOLVED: Dict[tuple, Kernels] = {}


def kernels(device_type: str) -> Kernels:
    """The resolved backends (:class:`Kernels`) for ``device_type`` under the current
    ``LVTP_IMPL``: one environment read and one dict lookup per call; each op's backend is
    chosen (availability probed) once per (device type, LVTP_IMPL, registry state)."""
    key = (device_type, os.environ.get("LVTP_IMPL", ""), _GENERATION[0])
    table = _RESOLVED.get(key)
    if table is None:
        requested_impl()  # a bad LVTP_IMPL raises here
        table = _RESOLVED[key] = Kernels(device_type)
    return table


def run(op: str, device: torch.device, *args):
    """Run ``op``'s chosen backend on already-checked arguments (schema order)."""
    return _backends(op)[choose_backend(op, device.type)].fn(*args)


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


def check_values() -> bool:
    """Whether the data checks run for a call made now."""
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


# --------------------------------------------------------------------------- definition
def _composite_backend(spec: OpSpec, backend: str) -> Optional[Backend]:
    """``spec``'s composite for ``backend``, when any of its parts has that backend: it
    runs ``spec.compose``, each part on its own choice; available while any such part is
    (looked up at each probe, so a part registered later counts)."""
    parts = [SPECS[p].backends[backend] for p in spec.parts if backend in SPECS[p].backends]
    if not parts:
        return None
    devices = None if any(b.devices is None for b in parts) else tuple(sorted({d for b in parts for d in b.devices}))

    def available() -> Tuple[bool, str]:
        whys = []
        for p in spec.parts:
            b = SPECS[p].backends.get(backend)
            if b is None:
                continue
            ok, why = b.available()
            if ok:
                return True, ""
            whys.append(why)
        return False, "; ".join(whys)

    composite = Backend(lambda *args: spec.compose(run, *args), devices, available)
    composite.composite = True
    return composite


def define(spec: OpSpec) -> OpSpec:
    """Define ``torch.ops.lvtp.<spec.name>`` from its spec (once per process)."""
    if spec.name in SPECS:
        raise ValueError(f"lvtp op {spec.name!r} is defined twice")
    if "ref" not in spec.backends:
        raise ValueError(f"lvtp op {spec.name!r} has no ref backend")
    for name in spec.backends:
        if name not in BACKENDS:
            raise ValueError(f"lvtp op {spec.name!r}: unknown backend {name!r}; backends are {BACKENDS}")
    for name in BACKENDS[1:]:  # a composite op runs any backend that has one of its parts
        if spec.parts and name not in spec.backends:
            b = _composite_backend(spec, name)
            if b is not None:
                spec.backends[name] = b
    qualname = f"{NAMESPACE}::{spec.name}"
    torch.library.define(qualname, spec.schema)
    parsed = torch._C.parse_schema(f"{qualname}{spec.schema}")
    spec.defaults = tuple((a.name, a.has_default_value(), a.default_value) for a in parsed.arguments)
    SPECS[spec.name] = spec
    SCHEMAS[spec.name] = spec.schema
    _GENERATION[0] += 1

    def full_args(args, kwargs):
        # The dispatcher drops trailing arguments equal to their schema default.
        args = list(args)
        for name, has_default, default in spec.defaults[len(args):]:
            if name in kwargs:
                args.append(kwargs[name])
            elif has_default:
                args.append(list(default) if isinstance(default, list) else default)
            else:
                raise TypeError(f"lvtp.{spec.name}: missing argument {name!r}")
        return args

    @torch.library.impl(qualname, "CompositeExplicitAutograd")
    def _kernel(*args, **kwargs):
        args = full_args(args, kwargs)
        spec.check(*args, values=check_values())
        return run(spec.name, _device_of(args), *args)

    @torch.library.register_fake(qualname)
    def _fake(*args, **kwargs):
        args = full_args(args, kwargs)
        spec.check(*args, values=False)
        return spec.fake(*args)

    return spec


def _device_of(args) -> torch.device:
    return next(a.device for a in args if isinstance(a, torch.Tensor))


def set_order(names: Sequence[str]) -> None:
    """List the defined ops in this order (``lvtp info``, ``backend_table``)."""
    if sorted(names) != sorted(SPECS):
        raise ValueError(f"set_order: {sorted(names)} are not the defined ops {sorted(SPECS)}")
    for table in (SPECS, SCHEMAS):
        items = {n: table[n] for n in names}
        table.clear()
        table.update(items)


def register_backend(op: str, backend: str, fn: Callable, devices: Optional[Sequence[str]] = None,
                     available: Callable[[], Tuple[bool, str]] = _always) -> None:
    """Add (or replace) a backend of a defined op: ``fn`` takes the op's arguments in
    schema order. For experiments and out-of-tree kernels; the package's own backends are
    listed in the op specs."""
    if op not in SPECS:
        raise ValueError(f"register_backend: unknown op {op!r}; ops are {op_names()}")
    if backend not in BACKENDS:
        raise ValueError(f"register_backend: unknown backend {backend!r}; backends are {BACKENDS}")
    SPECS[op].backends[backend] = Backend(fn, None if devices is None else tuple(devices), available)
    _GENERATION[0] += 1
    for spec in SPECS.values():
        if op in spec.parts and getattr(spec.backends.get(backend), "composite", backend not in spec.backends):
            b = _composite_backend(spec, backend)
            if b is not None:
                spec.backends[backend] = b
