"""The bad-input matrix on every backend (spec: "The op contract").

tests/test_op_contract.py holds the matrix itself (``BAD_CASES``: wrong rank and shape,
mismatched B or N, integer and bool tensors, tensors on different devices, NaN/Inf in
every float input, attention rows that are not probabilities, keep_ratio / num_protected /
qs / k / iters / scale / patch out of range, out-of-range and duplicated indices, a tensor
that requires grad, a zero-size batch) and runs it under the automatic backend choice.
Here the same matrix runs with every CPU backend forced (``LVTP_IMPL=ref|triton|cpp``):
validation happens in the op registry before dispatch, whatever the backend, so each case
raises a ValueError/RuntimeError naming the argument (and, for scalars, the bad value)
and no kernel is ever launched on bad data. On top of the shared matrix:

* the row-sum tolerance of attention rows (1e-3 in fp32, ROW_SUM_TOL): inside accepted,
  outside rejected with the row and its sum in the message;
* the bad values themselves in the messages of the scalar cases;
* index ranges checked before launch for every index-reading kernel (prune_idx,
  cluster_id, int32 indices), on every backend;
* the data-check policy of ``registry.check_values``: NaN/Inf, probability rows and index
  ranges are checked on every call, except inside ``registry.trusted_inputs()``, with
  ``LVTP_CHECK_VALUES=0``, and under CUDA graph capture; shape/dtype/device checks always;
* the compiled kernels called raw (the functions of ``lvtp_kernels._C``: no validation of
  values, but TORCH_CHECK on shapes/scalars): every bad shape or scalar raises RuntimeError, nothing crashes (run in
  a subprocess, so a segfault fails the test instead of killing the run).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import lvtp_kernels  # noqa: F401
from lvtp_kernels import registry
from lvtp_kernels.ops._common import interpreting

import test_op_contract as C  # the shared bad-input matrix
from ext_marks import HAVE_CPP

OPS = torch.ops.lvtp
NAN, INF = float("nan"), float("inf")

IMPLS = [
    pytest.param("ref", id="ref"),
    pytest.param("triton", id="triton", marks=pytest.mark.skipif(not interpreting(), reason="needs TRITON_INTERPRET=1")),
    pytest.param("cpp", id="cpp", marks=pytest.mark.skipif(not HAVE_CPP, reason="C++ extension not built")),
]
SCALAR_ARGS = ("keep_ratio", "num_protected", "alpha", "clusters", "iters", "scale", "patch")


@pytest.fixture
def impl(request, monkeypatch):
    monkeypatch.setenv("LVTP_IMPL", request.param)
    return request.param


def _raises_named(case: "C.Bad", args):
    with pytest.raises(case.exc) as exc_info:
        C._call(case.op, args)
    C._check_message(exc_info, case)
    return str(exc_info.value)


@pytest.mark.parametrize("impl", IMPLS, indirect=True)
@pytest.mark.parametrize("case", C.BAD_CASES)
def test_bad_input_every_backend(impl, case):
    msg = _raises_named(case, case.args())
    # scalar cases: the message shows the offending value too
    for name in SCALAR_ARGS:
        if name in case.overrides and not callable(case.overrides[name]) and case.arg == name:
            v = case.overrides[name]
            shown = "nan" if isinstance(v, float) and math.isnan(v) else str(v)
            assert shown in msg, f"message lacks the bad value {v!r}: {msg}"
    if case.arg == "qs" and "qs" in case.overrides:
        assert str(case.overrides["qs"]) in msg or "[]" in msg, msg


@pytest.mark.parametrize("impl", IMPLS, indirect=True)
def test_valid_base_args_run_on_every_backend(impl):
    """The control of the matrix: the unmodified arguments run on each backend."""
    for op in C.OP_NAMES:
        C._call(op, tuple(C._base_args(op)[n] for n in C.ARG_NAMES[op]))


# --------------------------------------------------------------------------- row sums
def _rows_off_by(attn, delta):
    """attn with row (1, 0, 3) scaled so that it sums to 1 + delta."""
    a = attn.clone()
    a[1, 0, 3] = a[1, 0, 3] / a[1, 0, 3].sum() * (1.0 + delta)
    return a


@pytest.mark.parametrize("impl", IMPLS, indirect=True)
@pytest.mark.parametrize("op", ["tsallis_entropy", "prune"])
@pytest.mark.parametrize("delta", [5e-4, -5e-4, 2e-3, -2e-3, 0.5])
def test_attention_row_sum_tolerance(impl, op, delta):
    a = C._base_args(op)
    a["attn"] = _rows_off_by(a["attn"], delta)
    args = tuple(a[n] for n in C.ARG_NAMES[op])
    if abs(delta) <= 1e-3:  # within ROW_SUM_TOL[float32]: accepted
        C._call(op, args)
        return
    with pytest.raises(ValueError, match=r"\battn\b.*row \(1, 0, 3\) sums to") as exc_info:
        C._call(op, args)
    assert f"{1 + delta:.4g}"[:5] in str(exc_info.value), str(exc_info.value)


# --------------------------------------------------------------------------- index ranges before launch
def _recon(**over):
    a = C._base_args("reconstruct_stage")
    a.update({k: (v(a) if callable(v) else v) for k, v in over.items()})
    return tuple(a[n] for n in C.ARG_NAMES["reconstruct_stage"])


def _set(name, index, value):
    def f(a):
        t = a[name].clone()
        t[index] = value
        return t

    return f


INDEX_CASES = {
    "prune_idx-negative": (lambda: _recon(prune_idx=_set("prune_idx", (0, 0), -1)), "-1"),
    "prune_idx-N": (lambda: _recon(prune_idx=_set("prune_idx", (1, 0), C.N_BASE)), str(C.N_BASE)),
    "keep_idx-huge": (lambda: _recon(keep_idx=_set("keep_idx", (0, 1), 2**40)), str(2**40)),
    "keep_idx-int32-negative": (
        lambda: _recon(keep_idx=lambda a: _set("keep_idx", (1, 2), -5)(a).to(torch.int32)), "-5"),
    "cluster_id-int64-huge": (
        lambda: _recon(cluster_id=lambda a: _set("cluster_id", (0, 4), 2**33)(dict(cluster_id=a["cluster_id"].long()))),
        str(2**33)),
    "gather-int32-N": (
        lambda: (C._base_args("gather_tokens")["x"],
                 _set("idx", (0, 0), C.N_BASE)(C._base_args("gather_tokens")).to(torch.int32)), str(C.N_BASE)),
    "scatter-int32-dup": (
        lambda: tuple(C._base_args("scatter_tokens")[n] for n in ("full", "x"))
        + (C._dup_row(C._base_args("scatter_tokens")["idx"]).to(torch.int32),), "twice"),
}


@pytest.mark.parametrize("impl", IMPLS, indirect=True)
@pytest.mark.parametrize("name", list(INDEX_CASES))
def test_indices_checked_before_launch(impl, name):
    make, shown = INDEX_CASES[name]
    args = make()
    op = "reconstruct_stage" if len(args) == 7 else ("gather_tokens" if len(args) == 2 else "scatter_tokens")
    with pytest.raises(ValueError) as exc_info:
        C._call(op, args)
    assert shown in str(exc_info.value), str(exc_info.value)


# --------------------------------------------------------------------------- the data-check policy
def _nan_attn_args():
    a = C._base_args("tsallis_entropy")
    a["attn"] = a["attn"].clone()
    a["attn"][0, 0, 0, 0] = NAN
    return a["attn"], a["qs"]


def test_nan_caught_normally_and_skipped_inside_trusted_inputs(monkeypatch):
    monkeypatch.setenv("LVTP_IMPL", "ref")
    attn, qs = _nan_attn_args()
    with pytest.raises(ValueError, match=r"\battn\b.*NaN"):
        OPS.tsallis_entropy(attn, qs)
    with registry.trusted_inputs():
        assert not registry.check_values()
        out = OPS.tsallis_entropy(attn, qs)  # no data check: the NaN flows through
        assert out.shape == (attn.shape[0], attn.shape[2], len(qs))
        with registry.trusted_inputs():  # nests
            OPS.tsallis_entropy(attn, qs)
        assert not registry.check_values()
    assert registry.check_values()
    with pytest.raises(ValueError, match=r"\battn\b.*NaN"):  # checks are back after the block
        OPS.tsallis_entropy(attn, qs)


def test_trusted_inputs_restores_checks_after_an_exception():
    attn, qs = _nan_attn_args()
    with pytest.raises(KeyError), registry.trusted_inputs():
        raise KeyError("boom")
    with pytest.raises(ValueError, match="NaN"):
        OPS.tsallis_entropy(attn, qs)


def test_trusted_inputs_is_per_thread():
    import threading

    seen = []
    with registry.trusted_inputs():
        t = threading.Thread(target=lambda: seen.append(registry.check_values()))
        t.start()
        t.join()
    assert seen == [True]


def test_trusted_inputs_keeps_shape_dtype_device_and_scalar_checks():
    a = C._base_args("prune")
    with registry.trusted_inputs():
        with pytest.raises(ValueError, match=r"\battn\b"):
            OPS.tsallis_entropy(a["attn"][0], list(C.QS))  # rank
        with pytest.raises(ValueError, match=r"\bkeep_ratio\b.*0\.0"):
            OPS.prune(a["tokens"], a["attn"], None, 0.0)
        with pytest.raises(ValueError, match=r"\bidx\b.*dtype"):
            OPS.gather_tokens(a["tokens"], torch.zeros(2, 3))
        with pytest.raises(ValueError, match=r"\bqs\b"):
            OPS.tsallis_entropy(a["attn"], [])
        with pytest.raises(ValueError, match="grad"):
            OPS.gather_tokens(a["tokens"].clone().requires_grad_(True), torch.zeros(2, 1, dtype=torch.int64))


@pytest.mark.parametrize("value,checks", [("0", False), ("false", False), ("off", False), ("1", True), ("", True)])
def test_lvtp_check_values_env(monkeypatch, value, checks):
    monkeypatch.setenv("LVTP_CHECK_VALUES", value)
    assert registry.check_values() is checks
    attn, qs = _nan_attn_args()
    if checks:
        with pytest.raises(ValueError, match="NaN"):
            OPS.tsallis_entropy(attn, qs)
    else:
        OPS.tsallis_entropy(attn, qs)


def test_lvtp_check_values_bogus_raises(monkeypatch):
    monkeypatch.setenv("LVTP_CHECK_VALUES", "maybe")
    with pytest.raises(ValueError, match=r"LVTP_CHECK_VALUES.*'maybe'"):
        OPS.tsallis_entropy(*_nan_attn_args())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_no_value_checks_during_cuda_graph_capture():
    """Inside capture a data check would sync the device (illegal); it is skipped."""
    a = torch.softmax(torch.randn(1, 2, 8, 8, device="cuda"), -1)
    OPS.tsallis_entropy(a, [2.0])  # warm-up outside capture
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        with torch.cuda.graph(g):
            assert not registry.check_values()
            out = OPS.tsallis_entropy(a, [2.0])
    g.replay()
    torch.cuda.synchronize()
    assert torch.isfinite(out).all()


# --------------------------------------------------------------------------- private C++ ops
_CPP_SCRIPT = textwrap.dedent(
    r"""
    import sys, torch
    import lvtp_kernels  # loads lvtp_kernels._C
    P = lvtp_kernels._ext.module("cpp")
    f = torch.randn
    t, e, ed = f(2, 10, 4), torch.rand(2, 10, 3), torch.rand(2, 10)
    x, init = f(2, 8, 3), f(2, 3, 3)
    nan_t = t.clone(); nan_t[0, 3, 1] = float("nan")
    inf_e = e.clone(); inf_e[1, 2, 0] = float("inf")
    nan_x = x.clone(); nan_x[1, 1, 1] = float("nan")
    S = lambda *a: P.select(*a, "ranked")
    ST = lambda *a: P.select(*a)
    base = (t, e, ed, 0.5, 1, 0.5, "low", 3, 2)
    def sel(i, v):
        a = list(base); a[i] = v; return tuple(a)
    must_raise = {
        "kmeans x rank2": lambda: P.kmeans(x[0], init, 2),
        "kmeans init rank4": lambda: P.kmeans(x, init[None], 2),
        "kmeans B mismatch": lambda: P.kmeans(x, init[:1], 2),
        "kmeans d mismatch": lambda: P.kmeans(x, init[..., :2], 2),
        "kmeans k > n": lambda: P.kmeans(x, f(2, 9, 3), 2),
        "kmeans k = 0": lambda: P.kmeans(x, init[:, :0], 2),
        "kmeans n = 0": lambda: P.kmeans(x[:, :0], init[:, :0], 2),
        "kmeans iters 0": lambda: P.kmeans(x, init, 0),
        "kmeans iters -3": lambda: P.kmeans(x, init, -3),
        "kmeans int x": lambda: P.kmeans(x.long(), init, 2),
        "kmeans bool init": lambda: P.kmeans(x, init > 0, 2),
        "select tokens rank2": lambda: S(*sel(0, t[0])),
        "select tokens rank4": lambda: S(*sel(0, t[None])),
        "select ent rank2": lambda: S(*sel(1, e[..., 0])),
        "select ent B": lambda: S(*sel(1, e[:1])),
        "select ent N": lambda: S(*sel(1, e[:, :-1])),
        "select ent Q=0": lambda: S(*sel(1, e[..., :0])),
        "select tokens C=0": lambda: S(*sel(0, t[..., :0])),
        "select tokens N=0": lambda: S(t[:, :0], e[:, :0], None, 0.5, 0, 0.5, "low", 3, 2),
        "select edge rank3": lambda: S(*sel(2, ed[..., None])),
        "select edge N": lambda: S(*sel(2, ed[:, :-1])),
        "select edge B": lambda: S(*sel(2, ed[:1])),
        "select keep_ratio 0": lambda: S(*sel(3, 0.0)),
        "select keep_ratio nan": lambda: S(*sel(3, float("nan"))),
        "select keep_ratio 2": lambda: S(*sel(3, 2.0)),
        "select num_protected -1": lambda: S(*sel(4, -1)),
        "select num_protected N": lambda: S(*sel(4, 10)),
        "select mode": lambda: S(*sel(6, "mid")),
        "select clusters 0": lambda: S(*sel(7, 0)),
        "select iters 0": lambda: S(*sel(8, 0)),
        "select allocation": lambda: ST(*base, "greedy"),
        "select proportional ent N": lambda: ST(*sel(1, e[:, :-1]), "proportional"),
    }
    # bad data: no validation in the private ops; they must return (anything) or raise, not crash
    may_return = {
        "select NaN tokens": lambda: S(*sel(0, nan_t)),
        "select Inf ent": lambda: S(*sel(1, inf_e)),
        "select NaN edge": lambda: S(*sel(2, torch.full_like(ed, float("nan")))),
        "select int tokens": lambda: S(*sel(0, t.long())),
        "select bool ent": lambda: S(*sel(1, e > 0.5)),
        "select zero batch": lambda: S(t[:0], e[:0], ed[:0], 0.5, 1, 0.5, "low", 3, 2),
        "select huge clusters": lambda: S(*sel(7, 10**9)),
        "select alpha nan": lambda: S(*sel(5, float("nan"))),
        "select all-NaN tokens": lambda: S(*sel(0, torch.full_like(t, float("nan")))),
        "select proportional NaN": lambda: ST(*sel(0, nan_t), "proportional"),
        "kmeans NaN x": lambda: P.kmeans(nan_x, init, 3),
        "kmeans Inf init": lambda: P.kmeans(x, torch.full_like(init, float("inf")), 3),
        "kmeans zero batch": lambda: P.kmeans(x[:0], init[:0], 2),
        "kmeans d = 0": lambda: P.kmeans(x[..., :0], init[..., :0], 2),
        "kmeans mixed dtypes": lambda: P.kmeans(x.half(), init.double(), 2),
        # a meta tensor among CPU ones: no data to read, an error, no crash
        "kmeans meta init": lambda: P.kmeans(x, init.to("meta"), 2),
        "select meta ent": lambda: S(*sel(1, e.to("meta"))),
        "select meta edge": lambda: S(*sel(2, ed.to("meta"))),
    }
    bad = []
    for name, fn in must_raise.items():
        print(name, flush=True)
        try:
            fn()
            bad.append(name + ": did not raise")
        except RuntimeError as exc:
            if "lvtp." not in str(exc) and "meta" not in str(exc).lower() and "device" not in str(exc).lower():
                bad.append(name + ": unexpected message " + str(exc)[:200])
    for name, fn in may_return.items():
        print(name, flush=True)
        try:
            fn()
        except RuntimeError:
            pass
    print("DONE", bad, flush=True)
    sys.exit(1 if bad else 0)
    """
)


@pytest.mark.skipif(not HAVE_CPP, reason="C++ extension not built")
def test_raw_cpp_kernels_reject_bad_shapes_without_crashing():
    env = dict(os.environ, LVTP_IMPL="auto")
    proc = subprocess.run([sys.executable, "-c", _CPP_SCRIPT], capture_output=True, text=True, timeout=300, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    tail = (proc.stdout[-2000:] + proc.stderr[-2000:])
    assert proc.returncode == 0, f"exit {proc.returncode} (negative: killed by a signal); last output:\n{tail}"
    assert "DONE []" in proc.stdout, tail
