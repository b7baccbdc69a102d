"""What every Triton op family shares: availability, devices, registration."""

from __future__ import annotations

import os
from typing import Callable, Tuple

import torch

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


def on_tensor_device(fn: Callable) -> Callable:
    """Run ``fn`` with the CUDA device of its first tensor argument current: Triton launches
    on the current device, so a tensor on cuda:1 with cuda:0 current would otherwise get
    foreign pointers."""

    def guarded(*args):
        dev = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
        if dev is not None and dev.type == "cuda":
            with torch.cuda.device(dev):
                return fn(*args)
        return fn(*args)

    guarded.__name__ = getattr(fn, "__name__", "launcher")
    guarded.__doc__ = fn.__doc__
    return guarded


def register(op: str, fn: Callable) -> None:
    """Register ``fn`` (the op's arguments in schema order) as the op's ``triton`` backend."""
    registry.register_backend(op, "triton", on_tensor_device(fn), devices=triton_devices(), available=triton_status)


def block_cap(gpu: int, interp: int) -> int:
    """Block size limit: moderate on a GPU, large under the interpreter (~4 ms per program)."""
    return interp if interpreting() else gpu
