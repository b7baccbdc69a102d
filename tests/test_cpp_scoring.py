"""The CPU scoring kernels (csrc/lvtp_cpu_fused.cpp: lvtp_cpp::attention_entropy and
lvtp_cpp::patch_edge_energy), the "cpp" backend of the public ops on CPU tensors, against
python_ref: fp32/fp64 to rounding, fp16/bf16 by the flash-attention rule."""

import pytest
import torch

import python_ref
from lvtp_kernels import registry
from tests.ext_marks import needs_cpp

pytestmark = needs_cpp

QS = [0.5, 1.0, 2.0, 3.0]
NS = [1, 2, 50, 197, 577, 1025]
HS = [1, 3, 12]


def _qkv(b, h, n, d, dtype, gen, layout="bnhd"):
    if layout == "bnhd":  # (B, N, H, D) storage viewed as (B, H, N, D), as models produce it
        return [(torch.randn(b, n, h, d, generator=gen) * 2).to(dtype).transpose(1, 2) for _ in range(3)]
    return [(torch.randn(b, h, n, d, generator=gen) * 2).to(dtype) for _ in range(3)]


def _err(a, b):
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("h", HS)
def test_attention_entropy_fp32_fp64(n, h, gen):
    b, d = (2, 16) if n > 500 else (2, 32)
    for dtype, tol in ((torch.float32, 2e-6), (torch.float64, 1e-12)):
        q, k, v = _qkv(b, h, n, d, dtype, gen)
        out, ent = torch.ops.lvtp_cpp.attention_entropy(q, k, v, QS, d**-0.5)
        ref_out, ref_ent = python_ref.attention_entropy(q, k, v, QS, d**-0.5)
        assert out.dtype == dtype and ent.dtype == torch.float32 and ent.shape == (b, n, len(QS))
        torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
        assert _err(ent, ref_ent) <= tol


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n", [50, 197])
def test_attention_entropy_low_precision_flash_rule(dtype, n, gen):
    b, h, d = 2, 3, 32
    q, k, v = _qkv(b, h, n, d, dtype, gen)
    out, ent = torch.ops.lvtp_cpp.attention_entropy(q, k, v, QS, d**-0.5)
    gold_out, gold_ent = python_ref.attention_entropy(q.double(), k.double(), v.double(), QS, d**-0.5)
    lp_out, lp_ent = python_ref.attention_entropy(q, k, v, QS, d**-0.5)  # the same PyTorch code in fp32 accumulation
    assert out.dtype == dtype
    assert _err(out, gold_out) <= 2 * _err(lp_out, gold_out) + 1e-6
    assert _err(ent, gold_ent) <= 2 * _err(lp_ent, gold_ent) + 1e-6


def test_attention_entropy_general_and_near_one_orders(gen):
    q, k, v = _qkv(2, 3, 77, 16, torch.float32, gen, layout="bhnd")
    qs = [0.05, 0.8, 0.999, 1.2, 1.7, 4.5]
    _, ent = torch.ops.lvtp_cpp.attention_entropy(q, k, v, qs, 0.3)
    _, gold = python_ref.attention_entropy(q.double(), k.double(), v.double(), qs, 0.3)
    _, ref32 = python_ref.attention_entropy(q, k, v, qs, 0.3)
    # near q = 1 the normaliser 1 - N^(1-q) is ~1e-3: fp32 rounding is amplified alike in both
    assert _err(ent, gold) <= 2 * _err(ref32, gold) + 1e-6


def test_attention_entropy_peaked_and_uniform_rows():
    n, d = 64, 8
    q = torch.zeros(1, 1, n, d)
    k = torch.randn(1, 1, n, d)
    v = torch.randn(1, 1, n, d)
    _, ent = torch.ops.lvtp_cpp.attention_entropy(q, k, v, QS, 1.0)  # q = 0: uniform rows
    torch.testing.assert_close(ent, torch.ones(1, n, len(QS)), rtol=0, atol=1e-6)
    q = k * 1e4  # each row puts all mass on its own key: entropies ~ 0, no NaN
    _, ent = torch.ops.lvtp_cpp.attention_entropy(q, k, v, QS, 1.0)
    assert torch.isfinite(ent).all() and ent.abs().max() < 1e-3


@pytest.mark.parametrize("hw", [(16, 16), (67, 95), (240, 320), (33, 17)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_patch_edge_energy(hw, dtype, gen):
    patch = 16 if min(hw) >= 16 else 4
    img = torch.rand(3, 3, *hw, generator=gen).to(dtype)
    got = torch.ops.lvtp_cpp.patch_edge_energy(img, patch)
    want = python_ref.patch_edge_energy(img, patch)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert _err(got, want) <= (1e-12 if dtype == torch.float64 else 1e-6)


def test_patch_edge_energy_strided_view(gen):
    base = torch.rand(2, 70, 90, 3, generator=gen)
    img = base.permute(0, 3, 1, 2)[:, :, 3:67, 5:85]  # channels-last storage, a crop
    assert not img.is_contiguous()
    torch.testing.assert_close(torch.ops.lvtp_cpp.patch_edge_energy(img, 16), python_ref.patch_edge_energy(img, 16),
                               rtol=0, atol=1e-6)


def test_public_ops_use_the_cpp_backend_on_cpu(gen, monkeypatch):
    monkeypatch.setenv("LVTP_IMPL", "auto")
    assert registry.choose_backend("attention_entropy", "cpu") == "cpp"
    assert registry.choose_backend("patch_edge_energy", "cpu") == "cpp"
    q, k, v = _qkv(1, 2, 30, 8, torch.float32, gen)
    out, ent = torch.ops.lvtp.attention_entropy(q, k, v, QS, 0.35)
    ref_out, ref_ent = python_ref.attention_entropy(q, k, v, QS, 0.35)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(ent, ref_ent, rtol=0, atol=2e-6)


def test_opcheck(gen):
    q, k, v = _qkv(1, 2, 9, 8, torch.float32, gen, layout="bhnd")
    torch.library.opcheck(torch.ops.lvtp_cpp.attention_entropy, (q, k, v, QS, 0.5))
    torch.library.opcheck(torch.ops.lvtp_cpp.patch_edge_energy, (torch.rand(1, 3, 32, 48, generator=gen), 16))


def test_raw_ops_reject_bad_shapes():
    with pytest.raises(RuntimeError, match="4-D"):
        torch.ops.lvtp_cpp.attention_entropy(torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 4), QS, 1.0)
    with pytest.raises(RuntimeError, match="qs is empty"):
        x = torch.randn(1, 1, 3, 4)
        torch.ops.lvtp_cpp.attention_entropy(x, x, x, [], 1.0)
    with pytest.raises(RuntimeError, match="patch must be"):
        torch.ops.lvtp_cpp.patch_edge_energy(torch.rand(1, 3, 8, 8), 16)
    with pytest.raises(RuntimeError, match=r"\(B, 3, H, W\)"):
        torch.ops.lvtp_cpp.patch_edge_energy(torch.rand(1, 4, 8, 8), 4)
