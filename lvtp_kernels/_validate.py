"""The checks every ``torch.ops.lvtp`` op is validated with (spec: "The op contract").

The building blocks of the ops' checks; each op's ``check`` (in its family module,
lvtp_kernels/ops/<family>.py) takes the op's arguments in schema order plus ``values``: with
``values=False`` only what a fake (meta) tensor can show is checked (ranks, shapes,
dtypes, devices, scalars, requires_grad), so the same function serves the fake kernels
under ``torch.compile``; with ``values=True`` the data is checked too (NaN/Inf,
attention rows that are not probability distributions, index ranges and duplicates).

Every error is a ``ValueError`` whose message starts with ``lvtp.<op>:`` and names the
argument and the offending value.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)
ENTROPY_MODES = ("low", "high")
# |row sum - 1| allowed for attention probabilities, by dtype (rounding of a softmax
# stored in that dtype stays far below these).
ROW_SUM_TOL = {torch.float64: 1e-3, torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 2e-2}


def _fail(op: str, msg: str) -> None:
    raise ValueError(f"lvtp.{op}: {msg}")


def _shape(t: Tensor) -> tuple:
    return tuple(t.shape)


def tensor(op: str, name: str, t, ndim: int, layout: str, dtypes=FLOAT_DTYPES, nonempty: bool = True) -> Tensor:
    """A tensor of rank ``ndim`` and an allowed dtype that does not require grad, with a
    batch of at least one and (``nonempty``) no other empty dimension."""
    if not isinstance(t, Tensor):
        _fail(op, f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        _fail(op, f"{name} must be a {ndim}-D tensor {layout}, got shape {_shape(t)}")
    if t.dtype not in dtypes:
        kinds = "a floating" if dtypes is FLOAT_DTYPES else "an integer"
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        _fail(op, f"{name} must be {kinds} tensor ({allowed}), got dtype {t.dtype}")
    if t.shape[0] == 0:
        _fail(op, f"{name} has an empty batch (shape {_shape(t)}); B must be >= 1")
    if nonempty and any(size == 0 for size in t.shape[1:]):
        _fail(op, f"{name} has an empty dimension: shape {_shape(t)} {layout}")
    if t.requires_grad:
        _fail(op, f"{name} requires grad; lvtp ops are inference only (use torch.no_grad() or .detach())")
    return t


def same_device(op: str, **tensors: Optional[Tensor]) -> None:
    named = [(n, t) for n, t in tensors.items() if t is not None]
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.device != first.device:
            _fail(op, f"{name} is on {t.device} but {first_name} is on {first.device}; all tensors must share a device")


def dim_equal(op: str, what: str, a: int, b: int, a_name: str, b_name: str) -> None:
    if a != b:
        _fail(op, f"{what} mismatch: {a_name} has {a}, {b_name} has {b}")


def _report_non_finite(op: str, name: str, t: Tensor) -> None:
    bad = (~torch.isfinite(t)).nonzero()
    if bad.numel():
        where = tuple(bad[0].tolist())
        _fail(op, f"{name} contains NaN or Inf (first at index {where}: {t[where].item()})")


def finite(op: str, name: str, t: Tensor) -> None:
    # A finite fp32 sum proves every element finite (NaN and Inf propagate); only when
    # the sum is not finite (a NaN/Inf, or an overflow) is the exact element check run.
    if t.numel() and not bool(torch.isfinite(t.sum(dtype=torch.float32))):
        _report_non_finite(op, name, t)


def probabilities(op: str, name: str, attn: Tensor) -> None:
    """Rows of ``attn`` must be finite, non-negative and sum to 1 (within ROW_SUM_TOL)."""
    if attn.numel() == 0:
        return
    sums = attn.sum(dim=-1, dtype=torch.float32)
    if not bool(torch.isfinite(sums).all()):  # finite row sums prove finite rows
        _report_non_finite(op, name, attn)
    if bool(attn.amin() < 0):
        bad = (attn < 0).nonzero()[0].tolist()
        _fail(op, f"{name} has a negative probability at index {tuple(bad)}: {attn[tuple(bad)].item()}")
    err = (sums - 1.0).abs()
    tol = ROW_SUM_TOL[attn.dtype]
    if bool((err > tol).any()):
        bad = (err > tol).nonzero()[0].tolist()
        _fail(
            op,
            f"{name} rows must be softmax probabilities summing to 1 (tolerance {tol}); "
            f"row {tuple(bad)} sums to {sums[tuple(bad)].item():.6g}",
        )


def qs_list(op: str, qs: Sequence[float]) -> None:
    if len(qs) == 0:
        _fail(op, "qs must be a non-empty list of positive orders, got []")
    for q in qs:
        if not (math.isfinite(q) and q > 0):
            _fail(op, f"qs must hold positive finite orders, got {list(qs)} (bad order {q})")


def positive_int(op: str, name: str, v: int, minimum: int = 1) -> None:
    if v < minimum:
        _fail(op, f"{name} must be >= {minimum}, got {v}")


def keep_ratio(op: str, v: float) -> None:
    if not (v > 0.0 and v <= 1.0):  # also rejects NaN
        _fail(op, f"keep_ratio must be in (0, 1], got {v}")


def alpha_value(op: str, alpha: float) -> None:
    if not (0.0 <= alpha <= 1.0):  # also rejects NaN
        _fail(op, f"alpha must be in [0, 1], got {alpha}")


def entropy_mode_value(op: str, mode: str) -> None:
    if mode not in ENTROPY_MODES:
        _fail(op, f"entropy_mode must be one of {ENTROPY_MODES}, got {mode!r}")


def num_protected(op: str, p: int, n: int) -> None:
    if not 0 <= p <= n - 1:
        _fail(op, f"num_protected must be in [0, N-1] = [0, {n - 1}], got {p}")


def indices(op: str, name: str, idx: Tensor, n: int, unique: bool, values: bool) -> None:
    if not values or idx.numel() == 0:
        return
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= n:
        bad = lo if lo < 0 else hi
        _fail(op, f"{name} holds index {bad}, out of range [0, {n - 1}]")
    if unique:
        srt = idx.sort(dim=-1).values
        dup = srt[..., 1:] == srt[..., :-1]
        if bool(dup.any()):
            row, col = dup.nonzero()[0].tolist()
            _fail(op, f"{name} row {row} holds index {int(srt[row, col])} twice; scatter indices must be unique")
