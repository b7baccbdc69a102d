"""What every Triton op family shares: availability, devices, registration."""

from __future__ import annotations

import os
from typing import Callable, Tuple

from .. import registry


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_status() -> Tuple[bool, str]:
    """(usable, why not): Triton imports, and a GPU or the interpreter can run it."""
    try:
        import triton  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means no Triton
        return False, f"triton does not import ({type(exc).__name__}: {exc})"
    return True, ""


def triton_devices() -> Tuple[str, ...]:
    """Device types the Triton kernels run on: CUDA, plus CPU under the interpreter."""
    return ("cuda", "cpu") if interpreting() else ("cuda",)


def register(op: str, fn: Callable) -> None:
    """Register ``fn`` (the op's arguments in schema order) as the op's ``triton`` backend."""
    registry.register_backend(op, "triton", fn, devices=triton_devices(), available=triton_status)


def block_cap(gpu: int, interp: int) -> int:
    """Block size limit: moderate on a GPU, large under the interpreter (~4 ms per program)."""
    return interp if interpreting() else gpu
