"""Triton ``tsallis_entropy`` (lvtp_kernels/ops/tsallis_triton.py) against python_ref.

Runs the real kernel on CPU tensors through Triton's interpreter (TRITON_INTERPRET=1,
set by conftest.py), called through ``torch.ops.lvtp`` with ``LVTP_IMPL=triton``.

* fp32 (and fp64) inputs: within 1e-5 absolute + 1e-5 relative of python_ref.
* fp16/bf16 inputs: the flash-attention rule. The kernel's max error against the fp64
  reference of the same (low-precision) input must be at most twice the error of the
  same PyTorch math evaluated in that low precision, plus 1e-6.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import lvtp_kernels  # noqa: F401  (defines torch.ops.lvtp.*)
from python_ref import ops as ref
from lvtp_kernels.ops._common import interpreting  # noqa: E402
from ext_marks import use_triton  # noqa: E402

# CPU tensors through the Triton interpreter; on a GPU machine tests/test_gpu_kernels.py runs
# the compiled kernels against the reference instead.
pytestmark = pytest.mark.skipif(not interpreting(), reason="needs TRITON_INTERPRET=1 (CPU interpreter tests)")

OP = "tsallis_entropy"
DEFAULT_QS = [0.5, 1.0, 2.0, 3.0]
NEAR_QS = [0.9, 0.99, 1.01, 1.1]
ALL_QS = DEFAULT_QS + [0.3, 1.7, 4.0] + NEAR_QS  # every evaluation form of the kernel
LOW = (torch.float16, torch.bfloat16)


_triton_backend = pytest.fixture(autouse=True, name="_triton_backend")(lambda monkeypatch: use_triton(monkeypatch, OP))


def _op(attn, qs):
    return torch.ops.lvtp.tsallis_entropy(attn, list(qs))


def make_attn(gen, b, h, n, dtype=torch.float32):
    """Softmax rows with random temperatures: near-uniform, ordinary and ~one-hot rows."""
    logits = torch.randn(b, h, n, n, generator=gen, dtype=torch.float64)
    temp = torch.exp(torch.empty(b, h, n, 1, dtype=torch.float64).uniform_(-3.0, 4.0, generator=gen))
    peaked = torch.rand(b, h, n, 1, generator=gen, dtype=torch.float64) < 0.1
    temp = torch.where(peaked, torch.full_like(temp, 300.0), temp)
    return torch.softmax(logits * temp, dim=-1).to(dtype)


def assert_close_fp32(got, want, tol=1e-5):
    assert got.dtype == torch.float32 and got.shape == want.shape and got.is_contiguous()
    err = (got.double() - want.double()).abs()
    bound = tol + tol * want.double().abs()
    assert bool((err <= bound).all()), f"max |err| {err.max().item():.3g}"


def lowp_tsallis(attn, qs):
    """python_ref's formulas with every operation kept in attn's low-precision dtype."""
    p = attn
    n = p.shape[-1]
    cols = []
    for q in qs:
        if q == 1.0:
            s, s_max = -torch.xlogy(p, p).sum(-1), math.log(n)
        else:
            s_max = -math.expm1((1.0 - q) * math.log(n))
            if abs(q - 1.0) >= ref.NEAR_ONE:
                s = 1.0 - p.pow(q).sum(-1)
            else:
                t = torch.where(p > 0, p * torch.expm1((q - 1.0) * torch.log(p)), torch.zeros_like(p))
                s = (1.0 - p.sum(-1)) - t.sum(-1)
        s_hat = s / s_max if s_max != 0.0 else torch.zeros_like(s)
        cols.append(s_hat.mean(dim=1))
    return torch.stack(cols, dim=-1)


def assert_flash_rule(got, attn, qs):
    exact = ref.tsallis_entropy(attn.double(), qs).double()
    err_kernel = (got.double() - exact).abs().max().item()
    err_torch = (lowp_tsallis(attn, qs).double() - exact).abs().max().item()
    assert err_kernel <= 2.0 * err_torch + 1e-6, (err_kernel, err_torch)


SIZES = [  # (B, H, N): every N with every H, large N only at small B and H
    (2, 1, 1), (2, 3, 1), (1, 12, 1),
    (2, 1, 2), (2, 3, 2), (1, 12, 2),
    (2, 1, 50), (2, 3, 50), (1, 12, 50),
    (1, 1, 197), (1, 3, 197), (1, 12, 197),
    (1, 1, 577), (1, 3, 577),
    (1, 1, 1025), (1, 3, 1025),
]


@pytest.mark.parametrize("b,h,n", SIZES)
def test_fp32_matches_reference(gen, b, h, n):
    attn = make_attn(gen, b, h, n)
    got = _op(attn, ALL_QS)
    assert_close_fp32(got, ref.tsallis_entropy(attn, ALL_QS))
    if n == 1:
        assert bool((got == 0).all())  # 0/0 := 0


@pytest.mark.parametrize("qs", [[1.0], [2.0], [0.99], [1.01, 0.9], [3.0, 0.5, 1.0, 2.0], [0.25, 5.0, 1.2, 0.8, 1.0]])
def test_order_lists(gen, qs):
    attn = make_attn(gen, 2, 3, 67)
    assert_close_fp32(_op(attn, qs), ref.tsallis_entropy(attn, qs))


def test_orders_near_one_against_fp64(gen):
    """The expm1 form keeps q -> 1 accurate: compare with the exact fp64 evaluation."""
    attn = make_attn(gen, 2, 3, 2)  # N = 2: the smallest S_max, the hardest case
    qs = [0.76, 0.9, 0.99, 0.999, 1.001, 1.01, 1.1, 1.24]
    got = _op(attn, qs)
    assert_close_fp32(got, ref.tsallis_entropy(attn, qs))
    assert_close_fp32(got, ref.tsallis_entropy(attn.double(), qs).float())


@pytest.mark.parametrize(
    "dtype,b,h,n",
    [
        (torch.float16, 2, 3, 2),
        (torch.bfloat16, 2, 3, 2),
        (torch.bfloat16, 2, 3, 50),
        (torch.float16, 1, 12, 197),
        (torch.bfloat16, 1, 1, 1025),
    ],
)
def test_low_precision_flash_rule(gen, dtype, b, h, n):
    attn = make_attn(gen, b, h, n, dtype)
    got = _op(attn, ALL_QS)
    assert got.dtype == torch.float32 and got.shape == (b, n, len(ALL_QS))
    assert_flash_rule(got, attn, ALL_QS)


def test_fp64_input(gen):
    attn = make_attn(gen, 2, 3, 50, torch.float64)
    got = _op(attn, ALL_QS)
    assert_close_fp32(got, ref.tsallis_entropy(attn, ALL_QS), tol=1e-6)


@pytest.mark.parametrize("dtype", (torch.float32,) + LOW)
@pytest.mark.parametrize("n", [2, 50, 197])
def test_one_hot_rows_are_zero(gen, dtype, n):
    hot = torch.randint(0, n, (2, 3, n), generator=gen)
    attn = torch.nn.functional.one_hot(hot, n).to(dtype)
    got = _op(attn, ALL_QS)
    assert bool((got.abs() <= 1e-6).all()), got.abs().max()
    assert_close_fp32(got, ref.tsallis_entropy(attn, ALL_QS))


@pytest.mark.parametrize("dtype", (torch.float32,) + LOW)
@pytest.mark.parametrize("n", [2, 50, 257])
def test_uniform_rows_are_one(dtype, n):
    attn = torch.full((1, 2, n, n), 1.0 / n, dtype=dtype)
    got = _op(attn, ALL_QS)
    want = ref.tsallis_entropy(attn, ALL_QS)
    if dtype == torch.float32:
        assert_close_fp32(got, want)
        assert_close_fp32(got, torch.ones_like(got))
    else:
        assert_flash_rule(got, attn, ALL_QS)


@pytest.mark.parametrize("eps", [1e-3, 1e-6, 1e-9])
def test_near_one_hot_rows(gen, eps):
    n = 97
    attn = torch.full((2, 3, n, n), eps / (n - 1), dtype=torch.float64)
    hot = torch.randint(0, n, (2, 3, n, 1), generator=gen)
    attn.scatter_(-1, hot, 1.0 - eps)
    attn = attn.float()
    assert_close_fp32(_op(attn, ALL_QS), ref.tsallis_entropy(attn, ALL_QS))


def test_exact_zeros_and_masked_tails(gen):
    """Rows with exact zeros (p = 0 contributes 0 for every order) and N just past a
    power of two (masked column and row tails)."""
    n = 129
    logits = torch.randn(2, 3, n, n, generator=gen)
    keep = torch.rand(2, 3, n, n, generator=gen) < 0.3
    keep[..., 0] = True
    attn = torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)
    assert bool((attn == 0).any())
    assert_close_fp32(_op(attn, ALL_QS), ref.tsallis_entropy(attn, ALL_QS))


def _strided_views(base):
    b, h, n, _ = base.shape
    heads_inner = base.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)  # (B, N, H, N) storage
    col_major = base.transpose(-1, -2).contiguous().transpose(-1, -2)  # stride_j = N
    buf = torch.zeros(b, 2 * h + 1, n + 1, 2 * n + 3, dtype=base.dtype)
    stepped = buf[:, 1::2, 1:, 3::2]  # steps and a storage offset
    stepped.copy_(base)
    batch_last = base.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2)
    return {"heads_inner": heads_inner, "col_major": col_major, "stepped": stepped, "batch_last": batch_last}


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_non_contiguous_views(gen, dtype):
    base = make_attn(gen, 2, 3, 37, dtype)
    want = ref.tsallis_entropy(base, ALL_QS)
    for name, view in _strided_views(base).items():
        assert torch.equal(view, base) and not view.is_contiguous(), name
        got = _op(view, ALL_QS)
        if dtype == torch.float32:
            assert_close_fp32(got, want)
        else:
            assert_flash_rule(got, view, ALL_QS)


def test_column_order_follows_qs(gen):
    """Column k of the output is order qs[k], whatever the order of the list."""
    attn = make_attn(gen, 1, 3, 50)
    fwd = _op(attn, ALL_QS)
    rev = _op(attn, ALL_QS[::-1])
    assert torch.equal(fwd, rev.flip(-1))


def test_compiles_for_hopper():
    """The kernel compiles for sm_90 (offline: Triton's own ptxas, no GPU needed)."""
    pytest.importorskip("triton.backends.nvidia")
    script = textwrap.dedent(
        """
        import triton, triton.language as tl
        from triton.backends.compiler import GPUTarget
        from lvtp_kernels.ops import tsallis_triton as T
        fn = T._tsallis_kernel
        for dt, acc, near in (("bf16", tl.float32, True), ("fp64", tl.float64, True)):
            sig = {"attn_ptr": "*" + dt, "par_ptr": "*fp64" if dt == "fp64" else "*fp32", "out_ptr": "*fp32",
                   "N": "i32", "H": "i32", "stride_b": "i64", "stride_h": "i32", "stride_i": "i32", "stride_j": "i32"}
            consts = dict(NQ=5, QPAD=8, HAS_NEAR=near, ACC=acc, TINY=T._DBL_MIN if dt == "fp64" else T._FLT_MIN,
                          EXPM1_DEG=16 if dt == "fp64" else 9, BLOCK_M=16, BLOCK_N=128, H_LOOP=-1, N_LOOP=-1)
            sig.update({k: "constexpr" for k in consts})
            src = triton.compiler.ASTSource(fn=fn, signature=sig,
                                            constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
            k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
            assert "cubin" in k.asm
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run(
        [sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert res.returncode == 0, res.stderr[-3000:]
