"""The CPU scoring kernels (csrc/attention_cpu.cpp and csrc/edge_cpu.cpp: lvtp_kernels._C.attention_entropy and
patch_edge_energy), the "cpp" backend of the public ops on CPU tensors, against
python_ref: fp32/fp64 to rounding, fp16/bf16 by the flash-attention rule."""

import pytest
import torch

import python_ref
from lvtp_kernels import registry
from tests.ext_marks import needs_cpp
from ext_marks import opcheck_compiled, compiled  # noqa: E402

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
        out, ent = compiled("attention_entropy")(q, k, v, QS, d**-0.5)
        ref_out, ref_ent = python_ref.attention_entropy(q, k, v, QS, d**-0.5)
        assert out.dtype == dtype and ent.dtype == torch.float32 and ent.shape == (b, n, len(QS))
        if dtype == torch.float64:
            torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-13)
        else:
            # Row blocks (more of them at small B*H) let BLAS round P @ V differently from the
            # reference's one batched product; both are ~5e-6 from fp64 here. Flash rule:
            o64, _ = python_ref.attention_entropy(q.double(), k.double(), v.double(), QS, d**-0.5)
            assert _err(out, o64) <= 2 * _err(ref_out, o64) + 1e-7, (_err(out, o64), _err(ref_out, o64))
            torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
        assert _err(ent, ref_ent) <= tol


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n", [50, 197])
def test_attention_entropy_low_precision_flash_rule(dtype, n, gen):
    b, h, d = 2, 3, 32
    q, k, v = _qkv(b, h, n, d, dtype, gen)
    out, ent = compiled("attention_entropy")(q, k, v, QS, d**-0.5)
    gold_out, gold_ent = python_ref.attention_entropy(q.double(), k.double(), v.double(), QS, d**-0.5)
    lp_out, lp_ent = python_ref.attention_entropy(q, k, v, QS, d**-0.5)  # the same PyTorch code in fp32 accumulation
    assert out.dtype == dtype
    assert _err(out, gold_out) <= 2 * _err(lp_out, gold_out) + 1e-6
    assert _err(ent, gold_ent) <= 2 * _err(lp_ent, gold_ent) + 1e-6


def test_attention_entropy_general_and_near_one_orders(gen):
    q, k, v = _qkv(2, 3, 77, 16, torch.float32, gen, layout="bhnd")
    qs = [0.05, 0.8, 0.999, 1.2, 1.7, 4.5]
    _, ent = compiled("attention_entropy")(q, k, v, qs, 0.3)
    _, gold = python_ref.attention_entropy(q.double(), k.double(), v.double(), qs, 0.3)
    _, ref32 = python_ref.attention_entropy(q, k, v, qs, 0.3)
    # near q = 1 the normaliser 1 - N^(1-q) is ~1e-3: fp32 rounding is amplified alike in both
    assert _err(ent, gold) <= 2 * _err(ref32, gold) + 1e-6


def test_attention_entropy_peaked_and_uniform_rows():
    n, d = 64, 8
    q = torch.zeros(1, 1, n, d)
    k = torch.randn(1, 1, n, d)
    v = torch.randn(1, 1, n, d)
    _, ent = compiled("attention_entropy")(q, k, v, QS, 1.0)  # q = 0: uniform rows
    torch.testing.assert_close(ent, torch.ones(1, n, len(QS)), rtol=0, atol=1e-6)
    eye = torch.eye(32)[None, None]  # logit 1e4 on the diagonal, 0 elsewhere: one-hot rows
    _, ent = compiled("attention_entropy")(eye * 1e4, eye, eye, QS, 1.0)
    assert torch.isfinite(ent).all() and ent.abs().max() < 1e-6


@pytest.mark.parametrize("hw", [(16, 16), (67, 95), (240, 320), (33, 17)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_patch_edge_energy(hw, dtype, gen):
    patch = 16 if min(hw) >= 16 else 4
    img = torch.rand(3, 3, *hw, generator=gen).to(dtype)
    got = compiled("patch_edge_energy")(img, patch)
    want = python_ref.patch_edge_energy(img, patch)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert _err(got, want) <= (1e-12 if dtype == torch.float64 else 1e-6)


def test_patch_edge_energy_strided_view(gen):
    base = torch.rand(2, 70, 90, 3, generator=gen)
    img = base.permute(0, 3, 1, 2)[:, :, 3:67, 5:85]  # channels-last storage, a crop
    assert not img.is_contiguous()
    torch.testing.assert_close(compiled("patch_edge_energy")(img, 16), python_ref.patch_edge_energy(img, 16),
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
    opcheck_compiled("attention_entropy", (q, k, v, QS, 0.5))
    opcheck_compiled("patch_edge_energy", (torch.rand(1, 3, 32, 48, generator=gen), 16))


def test_raw_ops_reject_bad_shapes():
    with pytest.raises(RuntimeError, match="4-D"):
        compiled("attention_entropy")(torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 4), QS, 1.0)
    with pytest.raises(RuntimeError, match="qs is empty"):
        x = torch.randn(1, 1, 3, 4)
        compiled("attention_entropy")(x, x, x, [], 1.0)
    with pytest.raises(RuntimeError, match="patch must be"):
        compiled("patch_edge_energy")(torch.rand(1, 3, 8, 8), 16)
    with pytest.raises(RuntimeError, match=r"\(B, 3, H, W\)"):
        compiled("patch_edge_energy")(torch.rand(1, 4, 8, 8), 4)


# --------------------------------------------------------------------------- reconstruct_stage
def _stage(b, n, k, c, dtype, gen, p=1):
    x = torch.randn(b, n, c, generator=gen).to(dtype)
    perm = torch.stack([torch.cat([torch.arange(p), p + torch.randperm(n - p, generator=gen)]) for _ in range(b)])
    keep = torch.sort(perm[:, :k], dim=1).values
    prune = torch.sort(perm[:, k:], dim=1).values
    cid = torch.randint(0, 4, (b, n), generator=gen, dtype=torch.int32)
    cid[:, :p] = -1
    full = torch.randn(b, k, c, generator=gen).to(dtype)
    return full, x, keep, prune, cid


@pytest.mark.parametrize("n, k", [(1, 1), (2, 1), (50, 20), (197, 140), (577, 300)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_reconstruct_nearest_bit_identical(n, k, dtype, gen):
    full, x, keep, prune, cid = _stage(2, n, k, 24, dtype, gen)
    got = compiled("reconstruct_nearest")(full, x, keep, prune, cid)
    want = python_ref.reconstruct_stage(full, x, keep, prune, cid, 4, "nearest")
    assert got.dtype == want.dtype and torch.equal(got, want)


def test_reconstruct_nearest_strided_and_int32(gen):
    full, x, keep, prune, cid = _stage(3, 60, 25, 16, torch.float32, gen)
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    got = compiled("reconstruct_nearest")(full, xt, keep.int(), prune.int(), cid)
    assert torch.equal(got, python_ref.reconstruct_stage(full, x, keep, prune, cid, 4, "nearest"))


def test_reconstruct_public_op_uses_cpp_for_nearest_only(gen, monkeypatch):
    monkeypatch.setenv("LVTP_IMPL", "auto")
    assert registry.choose_backend("reconstruct_stage", "cpu") == "cpp"
    full, x, keep, prune, cid = _stage(2, 40, 15, 8, torch.float32, gen)
    for mode in ("nearest", "residual", "frozen"):
        got = torch.ops.lvtp.reconstruct_stage(full, x, keep, prune, cid, 4, mode)
        assert torch.equal(got, python_ref.reconstruct_stage(full, x, keep, prune, cid, 4, mode)), mode


def test_reconstruct_nearest_opcheck(gen):
    full, x, keep, prune, cid = _stage(1, 12, 5, 4, torch.float32, gen)
    opcheck_compiled("reconstruct_stage", (full, x, keep, prune, cid, int(cid.max()) + 1, "nearest"))


def test_ops_run_under_inference_mode(gen):
    """The kernels' worker threads write the outputs of a caller in inference mode."""
    q, k, v = _qkv(2, 3, 40, 8, torch.float32, gen)
    full, x, keep, prune, cid = _stage(2, 40, 15, 8, torch.float32, gen)
    with torch.inference_mode():
        out, ent = compiled("attention_entropy")(q, k, v, QS, 0.3)
        rec = compiled("reconstruct_nearest")(full, x, keep, prune, cid)
        e = compiled("patch_edge_energy")(torch.rand(2, 3, 32, 32, generator=gen), 16)
    torch.testing.assert_close(out, python_ref.attention_entropy(q, k, v, QS, 0.3)[0])
    assert rec.shape == (2, 40, 8) and e.shape == (2, 4) and ent.shape == (2, 40, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n, k, c", [(1, 1, 3), (50, 20, 7), (197, 140, 192), (1025, 700, 16)])
def test_gather_tokens_exact(dtype, n, k, c, gen):
    x = torch.randn(2, n, c, generator=gen).to(dtype)
    idx = torch.stack([torch.sort(torch.randperm(n, generator=gen)[:k]).values for _ in range(2)])
    for i in (idx, idx.int()):
        assert torch.equal(compiled("gather_tokens")(x, i), python_ref.gather_tokens(x, idx))
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)  # strided input
    assert torch.equal(compiled("gather_tokens")(xt, idx), python_ref.gather_tokens(x, idx))


def test_gather_tokens_rejects_out_of_range():
    with pytest.raises(RuntimeError, match="out of range"):
        compiled("gather_tokens")(torch.randn(1, 4, 2), torch.tensor([[0, 4]]))


def test_reconstruct_nearest_rejects_bad_shapes(gen):
    full, x, keep, prune, cid = _stage(1, 12, 5, 4, torch.float32, gen)
    with pytest.raises(RuntimeError, match="shapes disagree"):
        compiled("reconstruct_nearest")(full, x, keep, prune[:, :-1], cid)
    with pytest.raises(RuntimeError, match="full \\(B, K, C\\)"):
        compiled("reconstruct_nearest")(full[0], x, keep, prune, cid)
    with pytest.raises(RuntimeError, match="needs a kept token"):
        compiled("reconstruct_nearest")(full[:, :0], x, keep[:, :0], torch.arange(12)[None], cid)
