"""select(..., precision="fast"): the batched float32 reference (python_ref/fast.py) and the
C++ kernel (csrc/select_fast_cpu.cpp) against the exact float64 path, by the tie-margin
certificate of tests/certify.py, plus exact structure, bitwise determinism (also under
batch permutation), and fast-vs-exact agreement end to end on the bundled model."""

from __future__ import annotations

import pytest
import torch

import lvtp_kernels
import python_ref
from lvtp_kernels import registry
from python_ref.fast import select_fast

from certify import certify, jaccard, structural
import lvtp_kernels._ext as ext
from ext_marks import HAVE_CPP

compiled = ext.module("cpp") if HAVE_CPP else None  # lvtp_kernels._C

NS = (1, 2, 50, 197, 577, 1025)


def _inputs(b, n, c, seed, dtype=torch.float32, ties=None):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(b, n, c, generator=g)
    ent = torch.rand(b, n, 4, generator=g)
    edge = torch.rand(b, n, generator=g)
    if ties == "rows":  # duplicate tokens: equidistant rows, equal u
        tokens[:, 1::2] = tokens[:, 0:-1:2] if n % 2 else tokens[:, 0::2]
        ent[:, 1::2] = ent[:, 0:-1:2] if n % 2 else ent[:, 0::2]
        edge[:, 1::2] = edge[:, 0:-1:2] if n % 2 else edge[:, 0::2]
    elif ties == "u":  # constant importance: every rank tied
        ent[:] = 0.5
        edge[:] = 0.25
    return tokens.to(dtype), ent, edge


CASES = [
    pytest.param(n, p, b, alloc, id=f"N{n}-P{p}-B{b}-{alloc}")
    for n in NS for p in (0, 1) if p < n for b in (1, 3) for alloc in ("ranked", "proportional")
    if not (n == 1025 and b == 3)
]


@pytest.mark.parametrize("n,p,b,alloc", CASES)
@pytest.mark.parametrize("backend", ["ref", "cpp"])
def test_fast_is_certified_against_exact(backend, n, p, b, alloc):
    if backend == "cpp" and compiled is None:
        pytest.skip("the C++ extension is not built")
    c = 48
    tokens, ent, edge = _inputs(b, n, c, seed=n * 7 + p + b)
    for keep_ratio, mode, clusters, iters in [(0.3, "high", 8, 3), (0.7, "low", 3, 1)]:
        args = (tokens, ent, edge, keep_ratio, p, 0.3, mode, clusters, iters, alloc)
        if backend == "ref":
            *out, tr = select_fast(*args, trace=True)
        else:
            res = compiled.select_fast(*args, True)
            out, tr = res[:3], res[3:]
        certify(*args, out, tr)
        exact = python_ref.select(*args)
        assert jaccard(out[0], exact[0]) >= 0.98


@pytest.mark.parametrize("ties", ["rows", "u"])
@pytest.mark.parametrize("backend", ["ref", "cpp"])
@pytest.mark.parametrize("alloc", ["ranked", "proportional"])
def test_fast_is_certified_at_exact_ties(backend, ties, alloc):
    if backend == "cpp" and compiled is None:
        pytest.skip("the C++ extension is not built")
    tokens, ent, edge = _inputs(2, 50, 16, seed=3, ties=ties)
    args = (tokens, ent, edge, 0.5, 1, 0.5, "low", 4, 3, alloc)
    res = select_fast(*args, trace=True) if backend == "ref" else compiled.select_fast(*args, True)
    out, tr = (res[:3], res[3]) if backend == "ref" else (res[:3], res[3:])
    certify(*args, out, tr)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_fast_low_precision_rows_cpp_equals_reference(dtype):
    if compiled is None:
        pytest.skip("the C++ extension is not built")
    tokens, ent, edge = _inputs(2, 197, 64, seed=11, dtype=dtype)
    args = (tokens, ent, edge, 0.5, 1, 0.3, "high", 8, 3, "proportional")
    *out_r, tr_r = select_fast(*args, trace=True)
    res = compiled.select_fast(*args, True)
    certify(*args, res[:3], res[3:])
    certify(*args, out_r, tr_r)
    for a, r in zip(out_r, res[:3]):
        assert torch.equal(a, r)


def test_fast_noncontiguous_tokens():
    tokens, ent, edge = _inputs(2, 50, 32, seed=5)
    t_nc = tokens.transpose(1, 2).contiguous().transpose(1, 2)
    assert not t_nc.is_contiguous()
    args = (ent, edge, 0.5, 1, 0.3, "high", 8, 3, "ranked", "fast")
    a = torch.ops.lvtp.select(tokens, *args)
    b = torch.ops.lvtp.select(t_nc, *args)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.parametrize("backend", ["ref", "cpp"])
def test_fast_is_deterministic_and_batch_permutation_equivariant(backend):
    if backend == "cpp" and compiled is None:
        pytest.skip("the C++ extension is not built")
    tokens, ent, edge = _inputs(5, 197, 64, seed=21)
    args = (0.4, 1, 0.3, "high", 8, 3, "proportional", "fast")
    with registry.forced_impl(backend):
        first = torch.ops.lvtp.select(tokens, ent, edge, *args)
        again = torch.ops.lvtp.select(tokens, ent, edge, *args)
        perm = torch.tensor([3, 0, 4, 2, 1])
        permuted = torch.ops.lvtp.select(tokens[perm], ent[perm], edge[perm], *args)
        single = [torch.ops.lvtp.select(tokens[i:i + 1], ent[i:i + 1], edge[i:i + 1], *args) for i in range(5)]
    for a, b, c in zip(first, again, permuted):
        assert torch.equal(a, b)
        assert torch.equal(a[perm], c)
    for i in range(5):
        for a, s in zip(first, single[i]):
            assert torch.equal(a[i : i + 1], s)


def test_fast_op_routes_to_the_cpp_kernel_and_agrees_with_the_reference(monkeypatch):
    if compiled is None:
        pytest.skip("the C++ extension is not built")
    assert registry.choose_backend("select", "cpu") == "cpp"
    tokens, ent, edge = _inputs(3, 577, 64, seed=8)
    args = (0.3, 1, 0.3, "high", 8, 3, "proportional", "fast")
    calls = []
    real = compiled.select_fast
    monkeypatch.setattr(compiled, "select_fast", lambda *a: calls.append(1) or real(*a))
    got = torch.ops.lvtp.select(tokens, ent, edge, *args)
    assert calls == [1]
    with registry.forced_impl("ref"):
        want = torch.ops.lvtp.select(tokens, ent, edge, *args)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_fast_opcheck():
    tokens, ent, edge = _inputs(2, 50, 16, seed=4)
    torch.library.opcheck(torch.ops.lvtp.select.default,
                          (tokens, ent, edge, 0.5, 1, 0.3, "high", 4, 2, "proportional", "fast"))


def test_fast_precision_is_validated():
    tokens, ent, edge = _inputs(1, 10, 8, seed=1)
    with pytest.raises(ValueError, match="precision"):
        torch.ops.lvtp.select(tokens, ent, edge, 0.5, 1, 0.3, "high", 4, 2, "ranked", "half")
    with pytest.raises(ValueError, match="precision"):
        python_ref.select(tokens, ent, edge, 0.5, 1, 0.3, "high", 4, 2, "ranked", "half")


def test_certificate_rejects_a_wrong_selection():
    # the certificate can fail: a kept token swapped for a pruned one breaks the allocation
    tokens, ent, edge = _inputs(1, 50, 16, seed=2)
    args = (tokens, ent, edge, 0.5, 1, 0.3, "high", 4, 2, "ranked")
    keep, prune, cid, tr = select_fast(*args, trace=True)
    bad_keep = keep.clone()
    bad_prune = prune.clone()
    bad_keep[0, -1], bad_prune[0, 0] = prune[0, 0], keep[0, -1]
    bad_keep, bad_prune = bad_keep.sort(1).values, bad_prune.sort(1).values
    with pytest.raises(AssertionError):
        certify(*args, (bad_keep, bad_prune, cid), tr)
    # and a centroid moved off its members' mean
    tr.centroids[0, 1, 0] += 0.01
    with pytest.raises(AssertionError, match="update|assignment"):
        certify(*args, (keep, prune, cid), tr)
    with pytest.raises(AssertionError, match="partition"):
        structural(torch.cat([keep[:, :-1], keep[:, :1]], 1), prune, cid, 50, 1, 0.5, 4, "ranked")


# ------------------------------------------------------------------ end to end
def test_fast_and_exact_agree_end_to_end_on_the_bundled_model():
    # The package's default (fast) against the exact selection on the bundled CamVid model
    # and its 3 bundled val photos, at 45 % fewer GFLOPs: the kept sets of every stage and
    # the predicted classes.
    from lvtp_kernels.app.cli import ASSETS, DEMO_IMAGES
    from lvtp_kernels.app.data.camvid import read_image
    from lvtp_kernels.app.segment import predict
    from lvtp_kernels.models import load_reference

    model = load_reference()
    images = torch.stack([read_image(str(ASSETS / f"{n}.png")) for n in DEMO_IMAGES])
    out, recs = {}, {}
    for precision in ("exact", "fast"):
        lvtp_kernels.patch(model, flops_reduction=0.45, precision=precision, keep_records=True)
        assert model._lvtp.precision == precision
        out[precision] = predict(model, images, model.cfg.img_size, tuple(images.shape[-2:]))
        recs[precision] = lvtp_kernels.last_records(model)
    assert len(recs["fast"]) == 3
    j = min(jaccard(a.keep_idx, b.keep_idx) for a, b in zip(recs["fast"], recs["exact"]))
    assert j >= 0.98, j
    agree = (out["fast"] == out["exact"]).float().mean().item()
    assert agree >= 0.995, agree


def test_patch_defaults_to_fast_and_validates_precision():
    from lvtp_kernels.models import build_model

    model = build_model("vit_ti", seed=0, img_size=(64, 64))
    lvtp_kernels.patch(model, flops_reduction=0.3)
    assert model._lvtp.precision == "fast"
    with pytest.raises(ValueError, match="precision"):
        lvtp_kernels.patch(model, flops_reduction=0.3, precision="fp16")


# ------------------------------------------------------------------ CUDA (the GPU check runs these)
from ext_marks import needs_cuda  # noqa: E402

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
@pytest.mark.parametrize("n", NS + (4097,))
@pytest.mark.parametrize("alloc", ["ranked", "proportional"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fast_cuda_kernel_is_certified(n, alloc, dtype):
    cu = ext.module("cuda")
    c = 768 if n >= 1025 else 64
    tokens, ent, edge = _inputs(2, n, c, seed=n + 1, dtype=dtype)
    p = 1 if n > 1 else 0
    args = (tokens, ent, edge, 0.4, p, 0.3, "high", 8, 3, alloc)
    dargs = tuple(t.cuda() if torch.is_tensor(t) else t for t in args)
    if not cu.select_fast_supported(n - p, c, min(8, n - p)):
        pytest.skip(f"beyond the CUDA fast kernel's limits (N={n}, C={c}): the torch fast path runs")
    res = cu.select_fast(*dargs, True)
    certify(*args, res[:3], res[3:])
    cpu = select_fast(*args)
    assert jaccard(res[0].cpu(), cpu[0]) >= 0.98
    again = cu.select_fast(*dargs, False)
    for a, b in zip(res[:3], again):
        assert torch.equal(a, b)


@needs_gpu
@pytest.mark.parametrize("alloc", ["ranked", "proportional"])
def test_fast_torch_path_on_cuda_is_certified(alloc):
    tokens, ent, edge = _inputs(3, 1025, 256, seed=9, dtype=torch.float16)
    args = (tokens, ent, edge, 0.4, 1, 0.3, "high", 8, 3, alloc)
    dargs = tuple(t.cuda() if torch.is_tensor(t) else t for t in args)
    *out, tr = select_fast(*dargs, trace=True)
    certify(*args, out, tr)


@needs_gpu
def test_fast_patched_forward_captures_in_a_cuda_graph_and_agrees_with_exact():
    from lvtp_kernels.app.cli import ASSETS, DEMO_IMAGES
    from lvtp_kernels.app.data.camvid import read_image
    from lvtp_kernels.models import load_reference

    model = load_reference().cuda()
    images = torch.stack([read_image(str(ASSETS / f"{n}.png")) for n in DEMO_IMAGES]).cuda()
    out, recs = {}, {}
    for precision in ("exact", "fast"):
        lvtp_kernels.patch(model, flops_reduction=0.45, precision=precision, keep_records=True)
        with torch.inference_mode():
            out[precision] = model(images).argmax(1)
        recs[precision] = lvtp_kernels.last_records(model)
    j = min(jaccard(a.keep_idx.cpu(), b.keep_idx.cpu()) for a, b in zip(recs["fast"], recs["exact"]))
    assert j >= 0.98, j
    assert (out["fast"] == out["exact"]).float().mean().item() >= 0.995
    # fast: no host sync, fixed shapes -> the whole pruned forward captures in one graph
    lvtp_kernels.patch(model, flops_reduction=0.45, precision="fast")
    static_in = images.clone()
    with torch.inference_mode():
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                model(static_in)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = model(static_in)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_out.argmax(1), out["fast"])


def test_cuda_graph_option_is_inert_on_cpu_and_survives_copies():
    import copy
    import pickle

    from lvtp_kernels.models import build_model

    model = build_model("vit_ti", seed=0, img_size=(64, 64)).eval()
    x = torch.randn(2, 3, 64, 64)
    lvtp_kernels.patch(model, flops_reduction=0.3)
    with torch.no_grad():
        want = model(x)
    lvtp_kernels.patch(model, flops_reduction=0.3, cuda_graph=True)
    assert model._lvtp.graphs is not None
    with torch.no_grad():
        assert torch.equal(model(x), want)  # CPU tensors: the plain forward
    assert model._lvtp.graphs.graphs == {}
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone._lvtp.graphs is not None and clone._lvtp.graphs.graphs == {}
        with torch.no_grad():
            assert torch.equal(clone(x), want)


@needs_gpu
def test_cuda_graph_option_replays_the_forward():
    from lvtp_kernels.models import build_model

    model = build_model("vit_ti", seed=0, img_size=(64, 64)).eval().cuda()
    lvtp_kernels.patch(model, flops_reduction=0.3)
    xs = [torch.randn(2, 3, 64, 64, device="cuda") for _ in range(3)]
    with torch.no_grad():
        want = [model(x).clone() for x in xs]
    lvtp_kernels.patch(model, flops_reduction=0.3, cuda_graph=True)
    with torch.no_grad():
        for x, w in zip(xs, want):
            torch.testing.assert_close(model(x), w, rtol=1e-3, atol=1e-3)
    assert len(model._lvtp.graphs.graphs) == 1
