"""Numerical edge cases of the lvtp ops on every backend present (ref, triton under the
interpreter, cpp; compiled triton on a GPU), and int64 index arithmetic.

* uniform rows (Ŝ = 1), one-hot rows (Ŝ = 0), near-one-hot rows (against a float64
  closed form);
* N = 1: every entropy is 0 (the spec's 0/0 := 0), no NaN anywhere downstream;
* tiny probabilities: fp16 rows with fp16-subnormal entries and fp32 rows with
  fp32-subnormal entries, orders q < 1 (p^q is not small there): finite and equal to the
  float64 reference (regression: the Triton tsallis kernel clamped subnormal p to FLT_MIN
  before the log, so 1e-44^0.05 came out as 0.0127 instead of 0.0064);
* attention logits ~1e4 (a naive exp overflows fp32 ~70x over) on every backend;
* int64 offsets: every Triton kernel run under the interpreter on views whose strides put
  elements past 2^31 (regressions: attention's ``offs_d * stride_d`` and the edge kernel's
  ``2 * stride_c`` were int32 products); a GPU-only test at shapes where B*N*C and
  B*H*N*N exceed 2^31 (skips on CPU).
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
import python_ref
from lvtp_kernels import registry
from lvtp_kernels.ops._common import interpreting
from python_ref import ops as ref

from ext_marks import HAVE_CPP

OPS = torch.ops.lvtp
QS = [0.05, 0.3, 0.5, 0.9, 0.99, 1.0, 1.001, 1.1, 2.0, 3.0, 7.0]
ENTROPY_IMPLS = [
    pytest.param("ref", id="ref"),
    pytest.param("triton", id="triton", marks=pytest.mark.skipif(
        not interpreting() and not torch.cuda.is_available(), reason="no interpreter and no GPU")),
]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def impl(request, monkeypatch):
    monkeypatch.setenv("LVTP_IMPL", request.param)
    return request.param


def _tsallis(attn, qs=QS):
    return OPS.tsallis_entropy(attn.to(DEVICE), qs).cpu()


def _ref64(attn, qs=QS):
    """The exact value of the stored probabilities, in float64."""
    return ref.tsallis_entropy(attn.double(), qs).double()


# --------------------------------------------------------------------------- rows
@pytest.mark.parametrize("impl", ENTROPY_IMPLS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [2, 7, 64, 197])
def test_uniform_rows_are_one(impl, dtype, n):
    attn = torch.full((2, 3, n, n), 1.0 / n, dtype=dtype)
    got = _tsallis(attn)
    want = _ref64(attn)  # 1 up to the row's rounding, amplified near q = 1
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)
    if dtype == torch.float64 or n in (2, 64):  # 1/n exact or fp64: the row sums to 1 (nearly) exactly
        torch.testing.assert_close(got, torch.ones_like(got), rtol=0, atol=1e-5)


@pytest.mark.parametrize("impl", ENTROPY_IMPLS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_one_hot_rows_are_zero(impl, dtype):
    n = 50
    idx = torch.randint(0, n, (2, 3, n, 1), generator=torch.Generator().manual_seed(0))
    attn = torch.zeros(2, 3, n, n).scatter_(-1, idx, 1.0).to(dtype)
    got = _tsallis(attn)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, torch.zeros_like(got), rtol=0, atol=1e-6)


@pytest.mark.parametrize("impl", ENTROPY_IMPLS, indirect=True)
@pytest.mark.parametrize("eps", [1e-3, 1e-6, 1e-9])
def test_near_one_hot_rows_match_float64(impl, eps):
    n = 33
    row = torch.full((n,), eps / (n - 1), dtype=torch.float64)
    row[5] = 1.0 - eps
    attn = row.expand(1, 2, n, n).to(torch.float32)
    got = _tsallis(attn)
    want = _ref64(attn)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- N = 1
@pytest.mark.parametrize("impl", ENTROPY_IMPLS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_single_token_entropies_are_zero(impl, dtype):
    attn = torch.ones(3, 2, 1, 1, dtype=dtype)
    got = _tsallis(attn)
    assert torch.equal(got, torch.zeros(3, 1, len(QS)))
    q = torch.randn(3, 2, 1, 8).to(dtype).to(DEVICE)
    v = torch.randn(3, 2, 1, 5).to(dtype).to(DEVICE)
    out, ent = OPS.attention_entropy(q, q, v, QS, 0.3)
    assert torch.equal(ent.cpu(), torch.zeros(3, 1, len(QS)))
    torch.testing.assert_close(out.cpu(), v.cpu())  # softmax over one key is 1


@pytest.mark.parametrize("impl", ["ref"] + (["cpp"] if HAVE_CPP else []), indirect=True)
def test_single_token_select_and_prune(impl):
    tokens = torch.randn(2, 1, 4)
    keep_idx, prune_idx, cid = OPS.select(tokens, torch.zeros(2, 1, 4), None, 0.5, 0, 0.5, "low", 8, 3)
    assert keep_idx.tolist() == [[0], [0]] and prune_idx.shape == (2, 0) and cid.tolist() == [[0], [0]]
    kept, keep_idx, prune_idx, cid = OPS.prune(tokens, torch.ones(2, 3, 1, 1), None, 0.3, 0)
    assert torch.equal(kept, tokens) and keep_idx.tolist() == [[0], [0]]


# --------------------------------------------------------------------------- tiny probabilities
@pytest.mark.parametrize("impl", ENTROPY_IMPLS, indirect=True)
def test_fp16_tiny_probabilities_no_nan(impl):
    """fp16 rows with subnormal entries (down to 2^-24 = 6e-8) and exact zeros: p^q for q < 1
    is finite and large relative to p; every order matches float64 on the stored values."""
    n = 40
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 2, n, n, generator=g, dtype=torch.float64) * 6.0
    attn = torch.softmax(logits, -1).to(torch.float16)
    attn[..., :4] = torch.tensor([6e-8, 1.2e-7, 3e-6, 0.0], dtype=torch.float16)  # fp16 subnormals and a zero
    attn = attn / attn.double().sum(-1, keepdim=True).to(torch.float16)  # renormalise within fp16 rounding
    got = _tsallis(attn)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), _ref64(attn), rtol=0, atol=1e-5)


@pytest.mark.parametrize("impl", ENTROPY_IMPLS, indirect=True)
@pytest.mark.parametrize("tiny", [1.4e-45, 1e-44, 1e-40, 1.1e-38])
def test_fp32_subnormal_probabilities(impl, tiny):
    """Regression (found by tests/test_fuzz.py): a subnormal p with a small order q.
    (1e-44)^0.05 = 0.0064, not (FLT_MIN)^0.05 = 0.0127."""
    n = 9
    row = torch.full((n,), 1e-3, dtype=torch.float32)
    row[2:5] = tiny
    row[0] = 1.0 - float(row[1:].double().sum())
    attn = row.expand(1, 1, n, n).contiguous()
    qs = [0.05, 0.2, 0.5, 0.9, 1.0]
    got = _tsallis(attn, qs)
    torch.testing.assert_close(got.double(), _ref64(attn, qs), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- large logits
@pytest.mark.parametrize("impl", ENTROPY_IMPLS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_attention_logits_that_overflow_a_naive_exp(impl, dtype):
    """scale * q.k ~ 1e4: exp(1e4) is inf in every float format. Integer q, k and a power
    of two scale make the logits exact, so the result is compared with float64."""
    g = torch.Generator().manual_seed(11)
    b, h, n, d = 1, 2, 37, 8
    q = torch.randint(-3, 4, (b, h, n, d), generator=g).float()
    k = torch.randint(-3, 4, (b, h, n, d), generator=g).float()
    q[..., 0], k[..., 0] = 200.0, 400.0  # logits 80000 + a spread of +-63, times 0.125
    v = torch.randn(b, h, n, 16, generator=g)
    qs = [0.5, 0.9, 1.0, 2.0, 3.0]  # the orders of tests/test_triton_attention.py (fp32 ref within 1e-5)
    out, ent = OPS.attention_entropy(*(t.to(dtype).to(DEVICE) for t in (q, k, v)), qs, 0.125)
    out, ent = out.cpu(), ent.cpu()
    assert torch.isfinite(out).all() and torch.isfinite(ent).all()
    r_out, r_ent = python_ref.attention_entropy(q.double(), k.double(), v.to(dtype).double(), qs, 0.125)
    torch.testing.assert_close(ent.double(), r_ent.double(), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.double(), r_out, rtol=0, atol=1e-5 if dtype == torch.float32 else 2e-2)


# --------------------------------------------------------------------------- int64 offsets (interpreter)
# Each case runs in a subprocess (an int32 wrap-around makes the interpreter read a wild
# address: a crash must fail the test, not end the run). The big tensors are views into
# torch.empty storages of 4-8 GiB that are never written except at the few elements of
# the view: Linux maps untouched pages lazily, so the resident memory stays small.
_INT64_SCRIPT = textwrap.dedent(
    r"""
    import os, sys, resource
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ["LVTP_IMPL"] = "triton"
    import torch
    import lvtp_kernels, python_ref
    OPS = torch.ops.lvtp
    S = 2**30  # strides of 2^30 elements: the third element along that dim is at 2^31
    case = sys.argv[1]

    def spread(shape, strides, dtype, seed):
        numel = 1 + sum((n - 1) * s for n, s in zip(shape, strides))
        base = torch.empty(numel, dtype=dtype)  # virtual: only the view's pages are touched
        view = base.as_strided(shape, strides)
        g = torch.Generator().manual_seed(seed)
        view.copy_(torch.randn(shape, generator=g).to(dtype))
        return view

    if case == "attention":  # head dim outermost: offs_d * stride_d reaches 2^31
        sh = (1, 1, 4, 3)
        q, k, v = (spread(sh, (0, 0, 1, S), torch.float16, i) for i in range(3))
        out, ent = OPS.attention_entropy(q, k, v, [0.5, 1.0, 2.0], 0.5)
        r_out, r_ent = python_ref.attention_entropy(q.contiguous(), k.contiguous(), v.contiguous(), [0.5, 1.0, 2.0], 0.5)
        assert (out.float() - r_out.float()).abs().max() < 1e-2, (out, r_out)
        assert (ent - r_ent).abs().max() < 1e-4, (ent, r_ent)
    elif case == "edge":  # channel stride 2^30: the blue plane at 2^31
        img = spread((1, 3, 4, 4), (0, S, 4, 1), torch.float16, 0).abs()
        got = OPS.patch_edge_energy(img, 2)
        want = python_ref.patch_edge_energy(img.contiguous(), 2)
        assert (got - want).abs().max() < 1e-5, (got, want)
    elif case == "tsallis":  # head stride 2^30: the third head at 2^31
        a = spread((1, 3, 2, 2), (0, S, 2, 1), torch.float16, 0)
        a.copy_(torch.softmax(a.float(), -1).half())
        got = OPS.tsallis_entropy(a, [0.5, 1.0, 2.0])
        want = python_ref.tsallis_entropy(a.contiguous(), [0.5, 1.0, 2.0])
        assert (got - want).abs().max() < 1e-5, (got, want)
    elif case == "gather_scatter":  # token stride 2^30: the third token at 2^31
        x = spread((1, 3, 2), (0, S, 1), torch.float16, 0)
        idx = torch.tensor([[2, 0, 2, 1]])
        assert torch.equal(OPS.gather_tokens(x, idx), python_ref.gather_tokens(x.contiguous(), idx))
        full = spread((1, 3, 2), (0, S, 1), torch.float16, 1)
        src = spread((1, 3, 2), (0, S, 1), torch.float16, 2)
        sidx = torch.tensor([[2, 0, 1]])
        assert torch.equal(OPS.scatter_tokens(full, src, sidx),
                           python_ref.scatter_tokens(full.contiguous(), src.contiguous(), sidx))
    elif case == "reconstruct":
        xs = spread((1, 4, 2), (0, S, 1), torch.float16, 0)
        full = spread((1, 3, 2), (0, S, 1), torch.float16, 1)
        keep = torch.tensor([[0, 2, 3]]); prune = torch.tensor([[1]])
        cid = torch.tensor([[-1, 0, 0, 1]], dtype=torch.int32)
        for mode in ("residual", "frozen", "nearest"):
            got = OPS.reconstruct_stage(full, xs, keep, prune, cid, 2, mode)
            want = python_ref.reconstruct_stage(full.contiguous(), xs.contiguous(), keep, prune, cid, 2, mode)
            assert torch.equal(got, want), (mode, got, want)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("OK", case, "max RSS MiB", rss // 1024)
    """
)


@pytest.mark.skipif(not interpreting(), reason="runs the kernels under the Triton interpreter")
@pytest.mark.parametrize("case", ["attention", "edge", "tsallis", "gather_scatter", "reconstruct"])
def test_int64_offsets_past_2_31_interpreter(case):
    proc = subprocess.run([sys.executable, "-c", _INT64_SCRIPT, case], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    tail = proc.stdout[-1500:] + proc.stderr[-3000:]
    if proc.returncode != 0 and "Cannot allocate memory" in tail:
        pytest.skip("the machine refuses the 4-8 GiB virtual storage")
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{tail}"
    assert f"OK {case}" in proc.stdout


# --------------------------------------------------------------------------- int64 offsets (GPU)
@pytest.mark.skipif(not torch.cuda.is_available() or interpreting(), reason="needs a CUDA GPU (compiled Triton)")
@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_properties(0).total_memory < 48 * 2**30,
                    reason="needs a GPU with >= 48 GiB")
def test_int64_offsets_large_tensors_gpu(monkeypatch):
    """Real tensors with more than 2^31 elements (peak < 40 GB, < 20 s on an H100/H200):
    B*H*N*N (tsallis), B*H*N*D (attention), B*3*H*W (edge), B*N*C (gather, scatter,
    reconstruct). Each result is checked where the offsets are past 2^31."""
    monkeypatch.setenv("LVTP_IMPL", "triton")
    dev = "cuda"
    big = 2**31
    # tsallis: (1, 8, 16400, 16400) fp32 = 8.6 GB; uniform rows (S = 1) except the last
    # head's last row, one-hot (S = 0): that row's head mean is 7/8
    n = 16400
    attn = torch.full((1, 8, n, n), 1.0 / n, device=dev)
    assert attn.numel() > big
    attn[0, 7, n - 1].zero_()
    attn[0, 7, n - 1, n - 1] = 1.0
    ent = OPS.tsallis_entropy(attn, [0.5, 1.0, 2.0])
    torch.testing.assert_close(ent[0, : n - 1].cpu(), torch.ones(n - 1, 3), rtol=0, atol=1e-4)
    torch.testing.assert_close(ent[0, n - 1].cpu(), torch.full((3,), 7 / 8), rtol=0, atol=1e-4)
    del attn, ent
    torch.cuda.empty_cache()
    # attention: (2, 16384, 1024, 64) fp16 = 2^31 elements per tensor; the last heads vs the reference
    b, h, n, d = 2, 16384, 1024, 64
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (torch.randn(b, h, n, d, device=dev, dtype=torch.float16, generator=g) for _ in range(3))
    assert q.numel() >= big
    out, ent = OPS.attention_entropy(q, k, v, [0.5, 1.0, 2.0], d**-0.5)
    r_out, _ = python_ref.attention_entropy(q[-1:, -2:], k[-1:, -2:], v[-1:, -2:], [0.5, 1.0, 2.0], d**-0.5)
    torch.testing.assert_close(out[-1:, -2:].float(), r_out.float(), rtol=0, atol=5e-3)
    assert torch.isfinite(ent).all()
    del q, k, v, out, ent, r_out
    torch.cuda.empty_cache()
    # edge: (64, 3, 3400, 3400) fp16 = 2.2e9 elements; the last image vs the reference
    img = torch.rand(64, 3, 3400, 3400, device=dev, dtype=torch.float16, generator=g)
    assert img.numel() > big
    e = OPS.patch_edge_energy(img, 16)
    torch.testing.assert_close(e[-1:], python_ref.patch_edge_energy(img[-1:], 16), rtol=1e-5, atol=1e-5)
    del img, e
    torch.cuda.empty_cache()
    # gather / scatter / reconstruct: (2, 2^20, 1100) fp16 = 2.3e9 elements
    b, n, c = 2, 2**20, 1100
    x = torch.randn(b, n, c, device=dev, dtype=torch.float16, generator=g)
    assert x.numel() > big
    idx = torch.arange(n - 1, -1, -1, device=dev).repeat(b, 1)  # reversed: the first rows come from the end
    out = OPS.gather_tokens(x, idx)
    assert torch.equal(out[:, :5], x[:, -5:].flip(1)) and torch.equal(out[:, -5:], x[:, :5].flip(1))
    del out
    sidx = idx[:, : n // 2].contiguous()  # scatter the first half of x into the last positions
    out = OPS.scatter_tokens(x, x[:, : n // 2], sidx)
    assert torch.equal(out[:, -1], x[:, 0]) and torch.equal(out[:, 0], x[:, 0])
    del out
    keep = torch.arange(0, n, 2, device=dev).repeat(b, 1)
    prune = torch.arange(1, n, 2, device=dev).repeat(b, 1)
    cid = (torch.arange(n, device=dev) % 3).to(torch.int32).repeat(b, 1)
    full = torch.gather(x, 1, keep[..., None].expand(-1, -1, c)) + 1  # residual of every kept token: 1
    out = OPS.reconstruct_stage(full, x, keep, prune, cid, 3, "residual")
    torch.testing.assert_close(out[:, -1].float(), x[:, -1].float() + 1, rtol=0, atol=1e-2)
    torch.testing.assert_close(out[:, -2], full[:, -1])
    del x, full, out
    torch.cuda.empty_cache()


# --------------------------------------------------------------------------- flat images
@pytest.mark.parametrize("impl", ENTROPY_IMPLS, indirect=True)
@pytest.mark.parametrize("shape,patch", [((1, 3, 1, 1), 1), ((2, 3, 16, 24), 8), ((1, 3, 5, 7), 2)])
def test_flat_image_has_zero_edge_energy(impl, shape, patch):
    """Regression (found by tests/test_fuzz.py): python_ref's conv2d left ~1e-8 on flat
    regions, which the normalisation by max e + 1e-6 turned into 0.0147 for a 1x1 image."""
    img = torch.tensor([0.194, 0.1416, 0.0919]).view(1, 3, 1, 1).expand(shape).to(torch.float16)
    assert torch.equal(ref.patch_edge_energy(img, patch), torch.zeros(shape[0], (shape[2] // patch) * (shape[3] // patch)))
    got = OPS.patch_edge_energy(img.to(DEVICE), patch).cpu()
    assert torch.equal(got, torch.zeros_like(got))
