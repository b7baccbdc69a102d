"""What the Triton kernel files share: whether the interpreter runs, Triton's availability,
block-size caps and loop bounds."""

from __future__ import annotations

import os
from typing import Tuple


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


def block_cap(gpu: int, interp: int) -> int:
    """Block size limit: moderate on a GPU, large under the interpreter (~4 ms per program)."""
    return interp if interpreting() else gpu


def loop_bound(n: int) -> int:
    """The constexpr loop bound a kernel gets for a runtime size ``n``: -1 on a GPU (the
    kernel loops to the runtime value, so a new size does not recompile), ``n`` itself
    under the interpreter. Triton 3.6's interpreter holds runtime scalars as 1-element
    numpy arrays, which recent NumPy (2.4 here) refuses to convert to an int in
    ``range(n)``; a constexpr bound is a plain int there."""
    return n if interpreting() else -1
