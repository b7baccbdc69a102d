"""The compiled k-means (lvtp_kernels._C.kmeans, the "cpp"/"cuda" backends of
torch.ops.lvtp.kmeans) against python_ref.kmeans and scikit-learn.

Assignments must equal the reference except at near-ties: points whose two candidate
clusters are within 1e-6 relative distance (the compiled kernels sum distances in
another order). Centroids and inertia agree within 1e-5.
"""

from __future__ import annotations

import os

import pytest
import torch

import lvtp_kernels  # noqa: F401  (registers torch.ops.lvtp.*)
import lvtp_kernels._ext as ext
from lvtp_kernels import registry
from python_ref import ops as ref

from ext_marks import HAVE_CPP, HAVE_CUDA, needs_cpp, needs_cuda, opcheck_compiled, compiled  # noqa: E402,F401


def test_extension_required_in_ci():
    """CI sets LVTP_REQUIRE_EXT=1: a missing or broken C++ build must fail there."""
    if os.environ.get("LVTP_REQUIRE_EXT") != "1":
        pytest.skip("LVTP_REQUIRE_EXT is not 1")
    assert HAVE_CPP, ext.status()["cpp"][1]
    for op in ("kmeans", "select", "attention_entropy", "patch_edge_energy", "gather_tokens", "reconstruct_stage"):
        assert registry.choose_backend(op, "cpu", warn=False) == "cpp", op


def _sqd(x, c):
    """(B, n, k) squared distances in float64."""
    x, c = x.double(), c.double()
    return ((x[:, :, None, :] - c[:, None, :, :]) ** 2).sum(-1)


def assert_kmeans_close(x, out, want, rtol=1e-6):
    """Assignments equal up to near-ties; centroids and inertia within 1e-5."""
    c, a = out
    c_ref, a_ref = want
    assert c.dtype == c_ref.dtype and c.shape == c_ref.shape
    assert a.dtype == torch.int64 and a.shape == a_ref.shape
    a, a_ref, c, c_ref, x = a.cpu(), a_ref.cpu(), c.cpu(), c_ref.cpu(), x.cpu()
    diff = (a != a_ref).nonzero().tolist()
    if diff:
        d = _sqd(x.to(c_ref.dtype), c_ref)
        for b, i in diff:
            da, db = float(d[b, i, a[b, i]]), float(d[b, i, a_ref[b, i]])
            assert abs(da - db) <= rtol * max(da, db, 1e-30), (b, i, da, db)
    torch.testing.assert_close(c, c_ref, rtol=1e-5, atol=1e-5)
    d = _sqd(x.to(c_ref.dtype), c_ref)
    inertia = d.gather(2, a[..., None]).sum()
    inertia_ref = d.gather(2, a_ref[..., None]).sum()
    assert abs(float(inertia) - float(inertia_ref)) <= 1e-5 * max(1.0, float(inertia_ref))


def _blobs(b, n, d, k, gen, spread=0.3, dtype=torch.float32):
    centers = torch.randn(b, k, d, generator=gen) * 3
    label = torch.randint(0, k, (b, n), generator=gen)
    x = centers.gather(1, label[..., None].expand(b, n, d)) + spread * torch.randn(b, n, d, generator=gen)
    return x.to(dtype)


def _init_from(x, k, gen):
    b, n, _ = x.shape
    idx = torch.stack([torch.randperm(n, generator=gen)[:k] for _ in range(b)])
    return x.gather(1, idx[..., None].expand(b, k, x.shape[2])).clone()


CASES = [  # (B, n, d, k, iters)
    (1, 1, 4, 1, 1),
    (2, 7, 3, 1, 3),
    (2, 7, 3, 7, 3),  # k == n
    (3, 50, 16, 4, 10),
    (2, 196, 192, 8, 10),
    (2, 300, 33, 5, 4),  # d not a multiple of the vector width
    (1, 1024, 768, 8, 5),
]


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_kmeans_matches_reference(case, dtype, gen):
    b, n, d, k, iters = case
    x = torch.randn(b, n, d, generator=gen).to(dtype)
    init = _init_from(x, k, gen)
    assert_kmeans_close(x, compiled("kmeans")(x, init, iters), ref.kmeans(x, init, iters))


@needs_cpp
def test_kmeans_public_op_uses_cpp(monkeypatch, gen):
    monkeypatch.setenv("LVTP_IMPL", "cpp")
    assert registry.choose_backend("kmeans", "cpu") == "cpp"
    x = _blobs(3, 120, 24, 5, gen)
    init = _init_from(x, 5, gen)
    c, a = torch.ops.lvtp.kmeans(x, init, 10)
    c2, a2 = compiled("kmeans")(x, init, 10)
    assert torch.equal(c, c2) and torch.equal(a, a2)
    assert_kmeans_close(x, (c, a), ref.kmeans(x, init, 10))


@needs_cpp
def test_kmeans_noncontiguous(gen):
    xt = torch.randn(2, 24, 90, generator=gen)  # (B, d, n)
    x = xt.transpose(1, 2)  # (B, n, d), not contiguous
    init = torch.randn(2, 6, 48, generator=gen)[:, :, ::2]  # strided last dim
    assert not x.is_contiguous() and not init.is_contiguous()
    out = compiled("kmeans")(x, init, 6)
    assert_kmeans_close(x, out, ref.kmeans(x, init, 6))
    out_c = compiled("kmeans")(x.contiguous(), init.contiguous(), 6)
    assert torch.equal(out[0], out_c[0]) and torch.equal(out[1], out_c[1])


@needs_cpp
def test_kmeans_empty_cluster_keeps_centroid():
    x = torch.tensor([[[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]]])
    init = torch.tensor([[[0.0, 0.0], [5.0, 5.0], [100.0, 100.0], [0.0, 0.0]]])  # 2 and 3 far: empty
    init[0, 3] = torch.tensor([-100.0, 7.0])  # far too
    c, a = compiled("kmeans")(x, init, 3)
    c_ref, a_ref = ref.kmeans(x, init, 3)
    assert torch.equal(a, a_ref) and a.tolist() == [[0, 0, 1, 1]]
    torch.testing.assert_close(c, c_ref)
    assert c[0, 2].tolist() == [100.0, 100.0] and c[0, 3].tolist() == [-100.0, 7.0]  # empty: kept


@needs_cpp
def test_kmeans_ties_go_to_lower_cluster():
    # 0.0 is exactly between -1 and 1; duplicate centroids tie everywhere
    x = torch.tensor([[[0.0], [-1.0], [1.0], [0.0]]], dtype=torch.float64)
    init = torch.tensor([[[1.0], [-1.0], [1.0]]], dtype=torch.float64)
    for iters in (1, 2, 5):
        c, a = compiled("kmeans")(x, init, iters)
        c_ref, a_ref = ref.kmeans(x, init, iters)
        assert torch.equal(a, a_ref) and torch.equal(c, c_ref)
    # identical points everywhere: every point in cluster 0
    x = torch.ones(2, 9, 5)
    c, a = compiled("kmeans")(x, x[:, :3].clone(), 4)
    assert torch.equal(a, torch.zeros(2, 9, dtype=torch.int64))


@needs_cpp
def test_kmeans_deterministic_across_threads(gen):
    x = torch.randn(3, 400, 40, generator=gen)
    init = _init_from(x, 6, gen)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = compiled("kmeans")(x, init, 8)
        torch.set_num_threads(max(2, old))
        many = compiled("kmeans")(x, init, 8)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])


@needs_cpp
@pytest.mark.parametrize("d,k,iters", [(2, 3, 1), (16, 4, 5), (64, 8, 10)])
def test_kmeans_vs_sklearn(d, k, iters, gen):
    """scikit-learn's Lloyd as an independent oracle.

    Comparable: KMeans(init=<ours>, n_init=1, max_iter=iters, tol=0, algorithm="lloyd")
    runs the same iterations (assignment then update) and then, like ours, a final
    assignment against the final centres; it stops early only at a fixed point (labels
    or centres unchanged), which gives the same result. Not comparable: its handling of
    empty clusters (it relocates them to far points; ours keep their centroid), so the
    data are well-separated blobs initialised with one point per blob. It works on
    centred data in the expanded distance form, hence inertia within 1e-4 relative.
    """
    sklearn = pytest.importorskip("sklearn.cluster")
    b, n = 3, 240
    centers = torch.randn(b, k, d, generator=gen, dtype=torch.float64) * 4
    label = torch.arange(n) % k
    x = centers[:, label] + 0.5 * torch.randn(b, n, d, generator=gen, dtype=torch.float64)
    init = x[:, :k].clone()  # points 0..k-1 are one per blob
    c, a = compiled("kmeans")(x, init, iters)
    for i in range(b):
        km = sklearn.KMeans(n_clusters=k, init=init[i].numpy(), n_init=1, max_iter=iters, tol=0.0,
                            algorithm="lloyd").fit(x[i].numpy())
        ours = float(((x[i] - c[i][a[i]]) ** 2).sum())
        assert abs(ours - km.inertia_) <= 1e-4 * km.inertia_
        assert (a[i].numpy() == km.labels_).all()
        torch.testing.assert_close(c[i], torch.from_numpy(km.cluster_centers_), rtol=1e-6, atol=1e-8)


@needs_cpp
def test_kmeans_opcheck_cpu(gen):
    x = torch.randn(2, 30, 8, generator=gen)
    opcheck_compiled("kmeans", (x, x[:, :4].clone(), 3))
    x16 = x.to(torch.float16)
    opcheck_compiled("kmeans", (x16, x16[:, :4].clone(), 2))


@needs_cpp
def test_kmeans_rejects_bad_shapes():
    with pytest.raises(RuntimeError, match="k <= n"):
        compiled("kmeans")(torch.randn(1, 3, 2), torch.randn(1, 4, 2), 1)
    with pytest.raises(RuntimeError, match="iters"):
        compiled("kmeans")(torch.randn(1, 3, 2), torch.randn(1, 2, 2), 0)


# --------------------------------------------------------------------------- CUDA
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("case", CASES + [(2, 500, 1600, 40, 3)], ids=lambda c: "x".join(map(str, c)))
def test_kmeans_cuda_matches_reference_and_cpu(case, dtype, gen):
    b, n, d, k, iters = case  # the last case's centroids do not fit shared memory
    x = torch.randn(b, n, d, generator=gen).to(dtype)
    init = _init_from(x, k, gen)
    out = compiled("kmeans")(x.cuda(), init.cuda(), iters)
    assert out[0].is_cuda and out[1].is_cuda
    assert_kmeans_close(x, out, ref.kmeans(x, init, iters))
    assert_kmeans_close(x, out, compiled("kmeans")(x, init, iters))
    again = compiled("kmeans")(x.cuda(), init.cuda(), iters)
    assert torch.equal(out[0], again[0]) and torch.equal(out[1], again[1])  # deterministic


@needs_cuda
def test_kmeans_cuda_public_op_and_opcheck(monkeypatch, gen):
    monkeypatch.setenv("LVTP_IMPL", "cuda")
    assert registry.choose_backend("kmeans", "cuda") == "cuda"
    x = torch.randn(2, 64, 12, generator=gen).cuda()
    c, a = torch.ops.lvtp.kmeans(x, x[:, :5].clone(), 4)
    assert_kmeans_close(x, (c, a), ref.kmeans(x.cpu(), x[:, :5].cpu().clone(), 4))
    opcheck_compiled("kmeans", (x, x[:, :5].clone(), 3))
