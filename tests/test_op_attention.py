"""The fused Triton attention + entropy kernel (lvtp_kernels/ops/attention_triton.py).

Runs on CPU tensors through the Triton interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), through ``torch.ops.lvtp.attention_entropy`` with the backend forced
to ``triton``, against ``python_ref.attention_entropy``:

* fp32: tight against the fp32 reference, and the entropies against the fp64 reference;
* fp16/bf16: the FlashAttention rule, the kernel's error against an fp64 reference at
  most twice that of the same PyTorch code run in the low precision (plus a tiny floor);
* odd head dims, Dv != D, transposed/sliced layouts, masked tails, N = 1, large logits,
  one-hot and uniform attention, several order lists (near-1 orders included).
"""

import pytest
import torch

import lvtp_kernels  # noqa: F401  (defines torch.ops.lvtp.*)
import lvtp_kernels.ops.attention_triton as attn_mod
import python_ref
from lvtp_kernels import registry
from lvtp_kernels.ops._common import interpreting

# CPU tensors through the Triton interpreter; on a GPU machine tests/test_cuda.py runs the
# compiled kernels against the reference instead.
pytestmark = pytest.mark.skipif(not interpreting(), reason="needs TRITON_INTERPRET=1 (CPU interpreter tests)")

OPS = torch.ops.lvtp
QS = [0.5, 1.0, 2.0, 3.0]
NEAR = [0.9, 1.1, 0.99, 1.0, 1.001]


@pytest.fixture(autouse=True)
def _force_triton(monkeypatch):
    monkeypatch.setenv("LVTP_IMPL", "triton")
    assert registry.choose_backend("attention_entropy", "cpu") == "triton"


def _qkv(b, h, n, d, dv=None, dtype=torch.float32, seed=0, std=1.0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, h, n, d, generator=g) * std for _ in range(2))
    v = torch.randn(b, h, n, dv or d, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _ref64(q, k, v, qs, scale):
    """python_ref on float64 inputs: out float64, ent computed in float64 (returned as float64)."""
    out, ent = python_ref.attention_entropy(q.double(), k.double(), v.double(), qs, scale)
    return out, ent.double()


def _check_fp32(q, k, v, qs, scale, ent_atol=1e-5):
    out, ent = OPS.attention_entropy(q, k, v, qs, scale)
    b, h, n, _ = q.shape
    assert out.shape == (b, h, n, v.shape[3]) and out.dtype == q.dtype and out.is_contiguous()
    assert ent.shape == (b, n, len(qs)) and ent.dtype == torch.float32
    r_out, r_ent = python_ref.attention_entropy(q, k, v, qs, scale)
    # fp32 itself is off by ~3e-6 here (logits ~10 carry ~1e-6 absolute error into p),
    # hence atol 5e-6 against the fp32 reference and the sharper fp64 check below.
    torch.testing.assert_close(out, r_out, rtol=1e-5, atol=5e-6)
    torch.testing.assert_close(ent, r_ent, rtol=0, atol=ent_atol)
    o64, e64 = _ref64(q, k, v, qs, scale)
    err_kernel = (out.double() - o64).abs().max().item()
    err_ref32 = (r_out.double() - o64).abs().max().item()
    assert err_kernel <= 1.5 * err_ref32 + 1e-6, (err_kernel, err_ref32)
    torch.testing.assert_close(ent.double(), e64, rtol=0, atol=ent_atol)
    return out, ent


@pytest.mark.parametrize(
    "b,h,n,d,dv,qs",
    [
        (2, 3, 1, 8, 8, QS),  # one token: every entropy is 0/0 := 0
        (1, 3, 2, 6, 33, QS + [0.9, 1.1]),
        (2, 3, 50, 33, 6, [2.0]),
        (1, 12, 197, 64, 64, QS),
        (1, 3, 577, 80, 64, [0.5, 1.5, 2.5, 1.0]),  # half-integer orders share one exp2
        (1, 12, 1025, 64, 64, QS),
        (1, 1, 1025, 16, 24, [0.3, 0.8, 1.2, 4.0, 7.0]),
    ],
)
def test_fp32_matches_reference(b, h, n, d, dv, qs):
    q, k, v = _qkv(b, h, n, d, dv, seed=n + d)
    _check_fp32(q, k, v, qs, d**-0.5 * 2.0)


@pytest.mark.parametrize("n", [2, 50, 577])
def test_orders_near_one_are_accurate(n):
    """Near q = 1 the kernel accumulates the deviation sum e^x expm1((q-1) x): against
    fp64 it stays ~1e-6 even at q = 1.001, where the literal 1 - sum p^q in fp32 would
    be off by ~1e-3 after normalisation."""
    q, k, v = _qkv(2, 3, n, 16, seed=n)
    for scale in (0.05, 3.0):  # near-uniform and peaked rows
        _, ent = OPS.attention_entropy(q, k, v, NEAR, scale)
        _, e64 = _ref64(q, k, v, NEAR, scale)
        torch.testing.assert_close(ent.double(), e64, rtol=0, atol=2e-6)


def test_non_contiguous_layouts():
    """q, k, v as views of one fused projection (B, N, 3, H, D) permuted to (B, H, N, D),
    plus a v sliced along D, without any copy by the caller."""
    g = torch.Generator().manual_seed(3)
    b, n, h, d = 2, 197, 3, 33
    qkv = torch.randn(b, n, 3, h, d, generator=g).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    assert not q.is_contiguous()
    _check_fp32(q, k, v, QS, d**-0.5)
    v_wide = torch.randn(b, n, h, 2 * d, generator=g).transpose(1, 2)[..., ::2]
    q_sliced = torch.randn(b + 1, h + 2, n, d + 3, generator=g)[1:, 1:-1, :, 2:-1]
    _check_fp32(q_sliced, k, v_wide, [1.0, 2.0], d**-0.5)


@pytest.mark.parametrize("dtype,n,d,dv", [(torch.float16, 197, 64, 64), (torch.bfloat16, 197, 64, 64),
                                          (torch.float16, 50, 33, 6), (torch.bfloat16, 577, 80, 48)])
def test_low_precision_flash_rule(dtype, n, d, dv):
    q, k, v = _qkv(2, 3, n, d, dv, dtype=dtype, seed=7)
    scale = d**-0.5
    out, ent = OPS.attention_entropy(q, k, v, QS + [0.9], scale)
    assert out.dtype == dtype and ent.dtype == torch.float32
    r_out, r_ent = _ref64(q, k, v, QS + [0.9], scale)
    # The same PyTorch code in the low precision: softmax(q k^T * scale) in dtype, then @ v.
    p_lp = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale, dim=-1)
    lp_out = torch.matmul(p_lp, v)
    lp_ent = python_ref.tsallis_entropy(p_lp, QS + [0.9])
    err_out = (out.double() - r_out).abs().max().item()
    err_ent = (ent.double() - r_ent).abs().max().item()
    base_out = (lp_out.double() - r_out).abs().max().item()
    base_ent = (lp_ent.double() - r_ent).abs().max().item()
    assert err_out <= 2 * base_out + 1e-5, (err_out, base_out)
    assert err_ent <= 2 * base_ent + 1e-6, (err_ent, base_ent)


def test_large_logits_do_not_overflow():
    """scale * s ~ 1e4 (exp would overflow fp32 ~70x over): integer-valued q, k and a
    power-of-two scale make every logit exact, so the result must match tightly."""
    g = torch.Generator().manual_seed(11)
    b, h, n, d = 1, 2, 197, 8
    q = torch.randint(-3, 4, (b, h, n, d), generator=g).float()
    k = torch.randint(-3, 4, (b, h, n, d), generator=g).float()
    q[..., 0], k[..., 0] = 200.0, 400.0  # every logit = 80000 + a spread of +-63
    v = torch.randn(b, h, n, 16, generator=g)
    scale = 0.125  # logits ~ 1e4
    out, ent = _check_fp32(q, k, v, QS + [0.9], scale)
    assert torch.isfinite(out).all() and torch.isfinite(ent).all()
    out16, ent16 = OPS.attention_entropy(q.half(), k.half(), v.half(), QS, scale)
    r_out, r_ent = _ref64(q, k, v, QS, scale)
    assert torch.isfinite(out16).all()
    torch.testing.assert_close(ent16.double(), r_ent, rtol=0, atol=1e-5)
    torch.testing.assert_close(out16.double(), r_out, rtol=0, atol=5e-3)


def test_one_hot_attention():
    """One key dominates every row: out = that key's value, entropies ~ 0."""
    g = torch.Generator().manual_seed(5)
    b, h, n, d = 2, 3, 130, 16
    q = torch.rand(b, h, n, d, generator=g) + 0.5  # positive queries
    k = torch.randn(b, h, n, d, generator=g) * 0.1
    k[:, :, 77] = 40.0  # every query's logit to key 77 exceeds the others by > 100
    v = torch.randn(b, h, n, 8, generator=g)
    out, ent = _check_fp32(q, k, v, QS + NEAR, 1.0)
    torch.testing.assert_close(out, v[:, :, 77:78].expand_as(out), rtol=0, atol=1e-6)
    assert ent.abs().max().item() < 1e-6


@pytest.mark.parametrize("n", [1, 50, 577])
def test_uniform_attention(n):
    """All keys equal: uniform rows, so every normalised entropy is 1 (0 when N = 1)."""
    g = torch.Generator().manual_seed(n)
    b, h, d = 1, 3, 16
    q = torch.randn(b, h, n, d, generator=g)
    k = torch.randn(b, h, 1, d, generator=g).expand(b, h, n, d)  # stride 0 along N
    v = torch.randn(b, h, n, 8, generator=g)
    qs = QS + NEAR
    out, ent = OPS.attention_entropy(q, k, v, qs, 0.5)
    torch.testing.assert_close(out, v.mean(dim=2, keepdim=True).expand_as(out), rtol=1e-5, atol=1e-6)
    expected = torch.full_like(ent, 0.0 if n == 1 else 1.0)
    torch.testing.assert_close(ent, expected, rtol=0, atol=1e-5)


def test_long_sequence_without_the_map():
    """N = 2049 (an N x N map would be 16 MiB here; the kernel streams K/V in blocks)."""
    q, k, v = _qkv(1, 1, 2049, 8, seed=2049)
    _check_fp32(q, k, v, QS, 0.5)


def test_float64_inputs_compute_in_fp32():
    q, k, v = _qkv(1, 2, 50, 12, dtype=torch.float64, seed=64)
    out, ent = OPS.attention_entropy(q, k, v, QS, 0.4)
    r_out, r_ent = python_ref.attention_entropy(q, k, v, QS, 0.4)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, r_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ent, r_ent, rtol=0, atol=1e-5)


def test_deterministic():
    q, k, v = _qkv(2, 12, 197, 32, seed=9)
    a = OPS.attention_entropy(q, k, v, QS, 0.3)
    b = OPS.attention_entropy(q, k, v, QS, 0.3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_launcher_refuses_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v = _qkv(1, 1, 4, 8)
    with pytest.raises(RuntimeError, match="CUDA"):
        attn_mod.attention_entropy(q, k, v, QS, 0.5)


def test_block_variant_writes_the_block_layout_with_the_same_values():
    # registry.kernels (the patched forward) runs the Triton kernel with its output stored
    # (B, N, H, Dv), so the block's transpose-reshape is a view; values equal the op's
    from lvtp_kernels import registry
    from lvtp_kernels.ops.attention import attention_entropy_bnhd

    if not registry.SPECS["attention_entropy"].backends["triton"].available()[0]:
        pytest.skip("Triton unavailable")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 50, 16, generator=g) for _ in range(3))
    with registry.forced_impl("triton"):
        want_out, want_ent = torch.ops.lvtp.attention_entropy(q, k, v, [0.5, 1.0, 2.0], 0.25)
        fn = registry.kernels("cpu").attention_entropy
    assert fn is attention_entropy_bnhd
    out, ent = fn(q, k, v, [0.5, 1.0, 2.0], 0.25)
    assert out.shape == want_out.shape and out.transpose(1, 2).is_contiguous() and want_out.is_contiguous()
    assert torch.equal(out, want_out) and torch.equal(ent, want_ent)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 2, 16), (2, 3, 50, 16), (1, 12, 197, 64)])
def test_entropy_only_pass_gives_the_fused_kernels_entropies(shape, dtype):
    """[H] item 3's alternative (SDPA for the output + an entropy-only pass): the pass is
    the fused kernel without V, with the same entropies bit for bit and no output."""
    from lvtp_kernels.ops._common import interpreting

    if not interpreting():
        pytest.skip("CPU interpreter test")
    g = torch.Generator().manual_seed(sum(shape))
    q, k, v = (torch.randn(*shape, generator=g).to(dtype) for _ in range(3))
    _, ent = attn_mod.attention_entropy(q, k, v, QS, shape[-1] ** -0.5)
    none, ent_only = attn_mod.attention_entropy(q, k, v, QS, shape[-1] ** -0.5, entropy_only=True)
    assert none is None and torch.equal(ent, ent_only)
