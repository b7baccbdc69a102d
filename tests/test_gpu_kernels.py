"""The compiled Triton kernels on a real GPU against python_ref (float64 where it matters).

The CPU suite proves the same kernels under the interpreter (tests/test_triton_*.py);
this file runs them compiled, at the spec's awkward sizes, and is run by
benchmarks/gpu_check.sh on a lent GPU. Skipped without CUDA.
"""

import pytest
import torch

import python_ref
from lvtp_kernels import registry

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

NS = [1, 2, 50, 197, 577, 1025]
HS = [1, 3, 12]
QS = [0.5, 1.0, 2.0, 3.0]
LOW = [torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _triton(monkeypatch):
    monkeypatch.setenv("LVTP_IMPL", "triton")


def _attn(b, h, n, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    logits = torch.randn(b, h, n, n, device="cuda", generator=g) * 3
    return torch.softmax(logits, -1).to(dtype)


def _err(a, b):
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("h", HS)
def test_tsallis_entropy_fp32(n, h):
    assert registry.choose_backend("tsallis_entropy", "cuda") == "triton"
    b = 2 if n <= 577 else 1
    attn = _attn(b, h, n, torch.float32, seed=n + h)
    got = torch.ops.lvtp.tsallis_entropy(attn, QS)
    want = python_ref.tsallis_entropy(attn.double(), QS).float()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("n", [197, 1025])
def test_tsallis_entropy_low_precision_flash_rule(dtype, n):
    attn = _attn(1, 12, n, dtype, seed=7)
    exact = python_ref.tsallis_entropy(attn.double(), QS)
    got = torch.ops.lvtp.tsallis_entropy(attn, QS)
    # the same PyTorch arithmetic carried out in the low precision
    p = attn
    lowp = []
    for q in QS:
        s = -(torch.xlogy(p, p)).sum(-1) / torch.log(torch.tensor(float(n), dtype=dtype, device="cuda")) if q == 1.0 \
            else (1 - p.pow(q).sum(-1)) / (1 - n ** (1 - q))
        lowp.append(s.mean(1))
    lowp = torch.stack(lowp, -1)
    assert _err(got, exact) <= 2 * _err(lowp, exact) + 1e-6


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("h", [1, 12])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_attention_entropy(n, h, dtype):
    assert registry.choose_backend("attention_entropy", "cuda") == "triton"
    g = torch.Generator(device="cuda").manual_seed(n)
    d = 64
    # (B, N, H, D) storage as models produce it, viewed as (B, H, N, D)
    q, k, v = (torch.randn(2, n, h, d, device="cuda", generator=g).to(dtype).transpose(1, 2) for _ in range(3))
    scale = d**-0.5
    out, ent = torch.ops.lvtp.attention_entropy(q, k, v, QS, scale)
    ref_out, ref_ent = python_ref.attention_entropy(q.double(), k.double(), v.double(), QS, scale)
    if dtype == torch.float32:
        torch.testing.assert_close(out.double(), ref_out, rtol=1e-4, atol=1e-4)  # tf32 is off in the kernel
        torch.testing.assert_close(ent.double(), ref_ent.double(), rtol=1e-5, atol=1e-5)
    else:
        lp = torch.softmax((q @ k.transpose(-1, -2)) * scale, -1)
        lp_out = lp @ v
        assert _err(out, ref_out) <= 2 * _err(lp_out, ref_out) + 1e-4
        lp_ent = python_ref.tsallis_entropy(lp.float(), QS)  # entropies of the low-precision map
        assert _err(ent, ref_ent) <= 2 * _err(lp_ent, ref_ent) + 1e-5


def test_attention_entropy_runs_where_the_map_would_not_fit():
    # B=1, H=16, N=32768: the fp16 N x N map alone would take 32 GiB; the fused kernel
    # needs O(N D) memory.
    n, h, d = 32768, 16, 64
    q, k, v = (torch.randn(1, h, n, d, device="cuda", dtype=torch.float16) for _ in range(3))
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out, ent = torch.ops.lvtp.attention_entropy(q, k, v, QS, d**-0.5)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    assert out.shape == (1, h, n, d) and ent.shape == (1, n, 4)
    assert torch.isfinite(ent).all() and (ent >= -1e-4).all() and (ent <= 1 + 1e-4).all()
    assert peak < 1 << 30, f"peak {peak / 2**20:.0f} MiB: something materialised the map"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("hw", [(67, 95), (224, 224), (512, 512)])
def test_patch_edge_energy(dtype, hw):
    img = torch.rand(2, 3, *hw, device="cuda").to(dtype)
    got = torch.ops.lvtp.patch_edge_energy(img, 16)
    want = python_ref.patch_edge_energy(img.double(), 16).float()
    torch.testing.assert_close(got, want, rtol=1e-5 if dtype == torch.float32 else 1e-3, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n, c", [(1, 7), (197, 192), (1025, 768), (4097, 1024)])
def test_gather_scatter_exact(dtype, n, c):
    g = torch.Generator(device="cuda").manual_seed(n)
    x = torch.randn(2, n, c, device="cuda", generator=g).to(dtype)
    k = max(1, int(0.7 * n))
    idx = torch.stack([torch.randperm(n, device="cuda", generator=g)[:k] for _ in range(2)])
    got = torch.ops.lvtp.gather_tokens(x, idx)
    assert torch.equal(got, python_ref.gather_tokens(x, idx))
    full = torch.randn(2, n, c, device="cuda", generator=g).to(dtype)
    assert torch.equal(torch.ops.lvtp.scatter_tokens(full, got, idx), python_ref.scatter_tokens(full, got, idx))


@pytest.mark.parametrize("mode", ["residual", "frozen", "nearest"])
@pytest.mark.parametrize("n", [50, 1025])
def test_reconstruct_stage(mode, n):
    g = torch.Generator(device="cuda").manual_seed(n)
    c = 192
    x = torch.randn(2, n, c, device="cuda", generator=g)
    ent = torch.rand(2, n, 4, device="cuda", generator=g)
    keep, prune, cid = python_ref.select(x, ent, None, 0.6, 1, 0.5, "low", 8, 5)
    full = torch.randn(2, keep.shape[1], c, device="cuda", generator=g)
    got = torch.ops.lvtp.reconstruct_stage(full, x, keep, prune, cid, 8, mode)
    want = python_ref.reconstruct_stage(full, x, keep, prune, cid, 8, mode)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
