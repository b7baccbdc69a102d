"""The fused "nearest" reconstruction (lvtp_kernels.ops.tokens_triton.reconstruct_nearest_fused:
the nearest-key search as a fused GEMM + running argmax and every output row, one launch per
stage; [H] item 4) against python_ref.pipeline: each key equal to the reference's or certified
as a float32 near-tie of the cosine similarity (float64 recomputation), every output row
exactly the reference's formula for the kernel's key, exact ties to the earlier position, and
the patched forward's routing (precision "fast" on the Triton backend only)."""

from __future__ import annotations

import pytest
import torch

from lvtp_kernels import registry
from lvtp_kernels.ops import tokens_triton as tt
from lvtp_kernels.ops._common import interpreting
from python_ref.pipeline import nearest_keys as ref_keys
from python_ref.pipeline import reconstruct_stage as ref_reconstruct

# CPU tensors through the interpreter here; compiled on a GPU machine (benchmarks/gpu_check.sh)
DEV = "cpu" if interpreting() else ("cuda" if torch.cuda.is_available() else None)
pytestmark = pytest.mark.skipif(DEV is None, reason="needs TRITON_INTERPRET=1 or a CUDA GPU")

SIM_TOL = 5e-5  # float32 dots of unit rows of up to ~1000 features, then two divisions


def _case(b, n, c, k, seed, dtype=torch.float32, protect=(0,), dup=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, c, generator=g)
    perm = torch.stack([torch.randperm(n, generator=g) for _ in range(b)])
    keep = perm[:, :k].sort(1).values
    prune = perm[:, k:].sort(1).values
    if dup and k >= 2:  # two kept tokens with identical features: an exact tie for every pruned token
        x[torch.arange(b), keep[:, 1]] = x[torch.arange(b), keep[:, 0]]
    cid = torch.randint(0, 8, (b, n), generator=g, dtype=torch.int32)
    for t in protect:
        cid[:, t] = -1
    full = torch.randn(b, k, c, generator=g).to(dtype)
    return tuple(t.to(DEV) for t in (full, x.to(dtype), keep, prune, cid))


def _fused(*args, **kw):
    if DEV == "cuda":
        with torch.cuda.device(args[0].device):
            res = tt.reconstruct_nearest_fused(*args, **kw)
    else:
        res = tt.reconstruct_nearest_fused(*args, **kw)
    return tuple(r.cpu() for r in res) if isinstance(res, tuple) else res.cpu()


def _cpu(args):
    return tuple(t.cpu() for t in args)


def _certify(full, x, keep, prune, cid, out, near):
    """Keys: equal to the reference's or within SIM_TOL of its similarity (float64); rows:
    exactly the reference's formula with the kernel's keys."""
    full, x, keep, prune, cid = _cpu((full, x, keep, prune, cid))
    b, k, c = full.shape
    want_keys = ref_keys(x.to(full.dtype), keep, prune, cid) if prune.shape[1] else near
    xs = x.to(full.dtype)
    x64 = xs.double()
    x64 = x64 / x64.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    kept64 = x64.gather(1, keep[..., None].expand(-1, -1, c))
    pr64 = x64.gather(1, prune[..., None].expand(-1, -1, c))
    sim = pr64 @ kept64.transpose(1, 2)
    source = cid.gather(1, keep) >= 0
    sim = sim.masked_fill(~source[:, None, :], float("-inf"))
    differ = near != want_keys
    for i, p in differ.nonzero().tolist():
        j, je = int(near[i, p]), int(want_keys[i, p])
        assert bool(source[i, j]) or not bool(source[i].any()), f"key {j} is a protected token"
        gap = float(sim[i, p, je] - sim[i, p, j])
        assert gap <= SIM_TOL, f"image {i} pruned {p}: key {j} instead of {je}, similarity gap {gap:.3g}"
    # every row: kept rows are full, pruned rows x[p] + (full[j] - x[keep[j]]) in full's dtype
    expect = torch.empty_like(out)
    expect.scatter_(1, keep[..., None].expand(-1, -1, c), full)
    if prune.shape[1]:
        j = near[..., None].expand(-1, -1, c)
        kept_at_stage = xs.gather(1, keep[..., None].expand(-1, -1, c))
        rows = xs.gather(1, prune[..., None].expand(-1, -1, c)) + (full.gather(1, j) - kept_at_stage.gather(1, j))
        expect.scatter_(1, prune[..., None].expand(-1, -1, c), rows)
    assert torch.equal(out, expect)
    return int(differ.sum())


CASES = [(1, 2, 16, 1), (2, 50, 32, 30), (3, 197, 64, 120), (1, 577, 96, 300), (1, 1025, 192, 600), (2, 50, 40, 1)]


@pytest.mark.parametrize("b,n,c,k", CASES, ids=[f"B{b}-N{n}-C{c}-K{k}" for b, n, c, k in CASES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fused_nearest_is_certified_against_the_reference(b, n, c, k, dtype):
    args = _case(b, n, c, k, seed=n + c, dtype=dtype, protect=(0,) if k > 1 else ())
    out, near = _fused(*args, 8, "nearest", return_keys=True)
    _certify(*args, out, near)
    if dtype == torch.float32:  # a row-for-row check against the reference where the keys agree
        args = _cpu(args)
        want = ref_reconstruct(*args, 8, "nearest")
        same = near == ref_keys(args[1], args[2], args[3], args[4])
        rows = args[3][same]
        bi = same.nonzero()[:, 0]
        assert torch.equal(out[bi, rows], want[bi, rows])


def test_fused_nearest_exact_ties_go_to_the_earlier_position():
    args = _case(2, 80, 48, 40, seed=3, dup=True, protect=())
    out, near = _fused(*args, 8, "nearest", return_keys=True)
    want = ref_keys(*_cpu(args[1:]))
    assert torch.equal(near, want)
    assert not bool((near == 1).any())  # position 1 duplicates position 0: never the key


def test_fused_nearest_all_kept_protected_takes_position_zero():
    full, x, keep, prune, cid = _case(1, 30, 16, 3, seed=4, protect=())
    cid[0, keep[0]] = -1
    out, near = _fused(full, x, keep, prune, cid, 8, "nearest", return_keys=True)
    assert torch.equal(near, torch.zeros_like(near))
    assert torch.equal(out, ref_reconstruct(*_cpu((full, x, keep, prune, cid)), 8, "nearest"))


def test_fused_nearest_any_strides_and_int32_indices():
    full, x, keep, prune, cid = _case(2, 60, 32, 25, seed=5)
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)
    ft = full.transpose(1, 2).contiguous().transpose(1, 2)
    a, na = _fused(full, x, keep, prune, cid, 8, "nearest", return_keys=True)
    b, nb = _fused(ft, xt, keep.int(), prune.int(), cid, 8, "nearest", return_keys=True)
    assert torch.equal(a, b) and torch.equal(na, nb)


def test_fused_nearest_other_modes_and_fp64_are_the_exact_kernel():
    full, x, keep, prune, cid = _case(2, 40, 16, 20, seed=6)
    for mode in ("residual", "frozen"):
        assert torch.equal(_fused(full, x, keep, prune, cid, 8, mode),
                           ref_reconstruct(*_cpu((full, x, keep, prune, cid)), 8, mode))
    f64 = (full.double(), x.double(), keep, prune, cid)
    assert torch.equal(_fused(*f64, 8, "nearest"), ref_reconstruct(*_cpu(f64), 8, "nearest"))


def test_fused_nearest_refuses_no_kept_token():
    full, x, keep, prune, cid = _case(1, 10, 16, 1, seed=7)
    with pytest.raises(ValueError, match="at least one kept token"):
        _fused(full[:, :0], x, keep[:, :0], torch.arange(10, device=DEV)[None], cid, 8, "nearest")


def test_certificate_can_fail():
    args = _case(1, 50, 32, 30, seed=8)
    out, near = _fused(*args, 8, "nearest", return_keys=True)
    bad = near.clone()
    bad[0, 0] = (bad[0, 0] + 7) % 30
    with pytest.raises(AssertionError):
        _certify(*args, out, bad)


def test_kernels_variant_routes_fast_to_the_fused_kernel_only_on_triton(monkeypatch):
    monkeypatch.setenv("LVTP_IMPL", "triton")
    ops = registry.kernels(DEV)
    assert ops.variant("reconstruct_stage", "fast") is registry.SPECS["reconstruct_stage"].variants["triton:fast"]
    assert ops.variant("reconstruct_stage", "exact") is ops.reconstruct_stage
    monkeypatch.setenv("LVTP_IMPL", "ref")
    ref_ops = registry.kernels(DEV)
    assert ref_ops.variant("reconstruct_stage", "fast") is ref_ops.reconstruct_stage


def test_patched_forward_fast_on_triton_uses_the_fused_stage(monkeypatch):
    """The package's ViT at precision "fast" with every op on Triton (the interpreter):
    the fused stage runs (spied) and the logits agree with the exact precision's."""
    import lvtp_kernels
    from lvtp_kernels.models import build_model

    monkeypatch.setenv("LVTP_IMPL", "triton")
    calls = []
    spec = registry.SPECS["reconstruct_stage"]
    fused = spec.variants["triton:fast"]
    monkeypatch.setitem(spec.variants, "triton:fast", lambda *a: calls.append(1) or fused(*a))
    registry._GENERATION[0] += 1  # drop the resolved tables: the spy must be looked up
    model = build_model("vit_ti", seed=0, img_size=(64, 64)).eval().to(DEV)
    x = torch.randn(2, 3, 64, 64, device=DEV)
    out = {}
    for precision in ("exact", "fast"):
        lvtp_kernels.patch(model, flops_reduction=0.3, precision=precision)
        with torch.inference_mode():
            out[precision] = model(x)
    assert calls, "the fused reconstruction did not run"
    agree = (out["fast"].argmax(1) == out["exact"].argmax(1)).float().mean().item()
    assert agree >= 0.995, agree
    registry._GENERATION[0] += 1
