"""The op contract of ``torch.ops.lvtp`` (spec: "The op contract (torch.ops.lvtp)").

* ``torch.library.opcheck`` on every op over fp32/fp16/bf16, non-contiguous views,
  optional arguments omitted and given;
* ``torch.compile(fullgraph=True)`` equals eager;
* fake (meta) kernels give the real outputs' shapes, dtypes and strides;
* output dtypes;
* the bad-input matrix: every invalid input raises an error naming the argument, from
  the real kernel and (shape-level errors) from the fake kernel under FakeTensorMode;
* the ``LVTP_IMPL`` dispatch policy of ``lvtp_kernels.registry``.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Dict, List, Optional

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode

import lvtp_kernels  # noqa: F401  (registers torch.ops.lvtp.*)
import python_ref
from lvtp_kernels import registry

ops = torch.ops.lvtp

OP_NAMES = (
    "tsallis_entropy",
    "attention_entropy",
    "patch_edge_energy",
    "kmeans",
    "select",
    "prune",
    "gather_tokens",
    "scatter_tokens",
    "reconstruct_stage",  # the project's addition: step 7 for one stage
)
# Argument names of each op in schema order (spec).
ARG_NAMES: Dict[str, tuple] = {
    "tsallis_entropy": ("attn", "qs"),
    "attention_entropy": ("q", "k", "v", "qs", "scale"),
    "patch_edge_energy": ("image", "patch"),
    "kmeans": ("x", "init", "iters"),
    # the spec's select plus the project's choice of budget allocation (default: the spec's "ranked")
    "select": ("tokens", "ent", "edge", "keep_ratio", "num_protected", "alpha", "entropy_mode", "clusters", "iters",
               "allocation", "precision"),
    "prune": ("tokens", "attn", "edge", "keep_ratio", "num_protected", "qs", "alpha", "entropy_mode", "clusters", "iters"),
    "gather_tokens": ("x", "idx"),
    "scatter_tokens": ("full", "x", "idx"),
    "reconstruct_stage": ("full", "x_stage", "keep_idx", "prune_idx", "cluster_id", "clusters", "mode"),
}
FLOATS = (torch.float32, torch.float16, torch.bfloat16)
QS = [0.5, 1.0, 2.0, 3.0]


# --------------------------------------------------------------------------- inputs
def _randn(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype)


def _rand(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g).to(dtype)


def _attn(b, h, n, seed=0, dtype=torch.float32, sharp=2.0):
    """(B, H, N, N) softmax probabilities (computed in fp32, stored in ``dtype``)."""
    return torch.softmax(_randn(b, h, n, n, seed=seed) * sharp, dim=-1).to(dtype)


def _attn_transposed(b, h, n, seed=0):
    """A non-contiguous (B, H, N, N) attention: the (B, N, H, N) softmax, transposed."""
    a = torch.softmax(_randn(b, n, h, n, seed=seed) * 2.0, dim=-1).transpose(1, 2)
    assert not a.is_contiguous()
    return a


def _unique_idx(b, n, k, seed=0, dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(b)]).to(dtype)


def _noncontig(t):
    """The same values as ``t`` in a non-contiguous view (every other element of a wider tensor)."""
    wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    wide[..., ::2] = t
    view = wide[..., ::2]
    assert not view.is_contiguous() and torch.equal(view, t)
    return view


class Sample:
    def __init__(self, op: str, args: tuple, kwargs: Optional[dict] = None):
        self.op = op
        self.args = args
        self.kwargs = kwargs or {}


def _samples() -> Dict[str, Sample]:
    s: Dict[str, Sample] = {}
    B, H, N, C, D = 2, 2, 12, 6, 4

    # tsallis_entropy
    for dt in FLOATS:
        s[f"tsallis-{dt}"] = Sample("tsallis_entropy", (_attn(B, H, N, dtype=dt), QS))
    s["tsallis-transposed"] = Sample("tsallis_entropy", (_attn_transposed(B, H, N), [1.0]))
    s["tsallis-sliced"] = Sample("tsallis_entropy", (_attn(4, 3, N, seed=1)[::2, 1:], [2.0, 0.5]))
    s["tsallis-N1"] = Sample("tsallis_entropy", (torch.ones(B, H, 1, 1), [0.5, 1.0, 2.0]))
    s["tsallis-N50"] = Sample("tsallis_entropy", (_attn(1, 2, 50, seed=2), [0.25, 1.0, 4.0]))

    # attention_entropy
    for dt in FLOATS:
        q, k, v = (_randn(B, H, N, D, seed=i, dtype=dt) for i in range(3))
        s[f"attnent-{dt}"] = Sample("attention_entropy", (q, k, v, QS, D**-0.5))
    q, k = (_randn(B, N, H, D, seed=i).transpose(1, 2) for i in range(2))
    v = _randn(B, N, H, 2 * D, seed=3).transpose(1, 2)[..., ::2]  # transposed and strided
    v6 = _randn(B, N, H, 6, seed=4).transpose(1, 2)  # Dv = 6 != D
    s["attnent-transposed"] = Sample("attention_entropy", (q, k, v, [1.0, 2.0], 0.5))
    s["attnent-Dv"] = Sample("attention_entropy", (q, k, v6, [3.0], 1.0))
    s["attnent-N1"] = Sample("attention_entropy", tuple(_randn(1, 2, 1, D, seed=i) for i in range(3)) + ([1.0, 2.0], 0.5))

    # patch_edge_energy
    for dt in FLOATS:
        s[f"edge-{dt}"] = Sample("patch_edge_energy", (_rand(B, 3, 16, 16, dtype=dt), 4))
    s["edge-channels-last"] = Sample("patch_edge_energy", (_rand(B, 16, 16, 3, seed=1).permute(0, 3, 1, 2), 4))
    s["edge-remainder"] = Sample("patch_edge_energy", (_rand(1, 3, 18, 13, seed=2), 4))
    s["edge-one-patch"] = Sample("patch_edge_energy", (_rand(1, 3, 8, 8, seed=3), 8))
    s["edge-constant"] = Sample("patch_edge_energy", (torch.full((1, 3, 8, 8), 0.5), 2))

    # kmeans
    for dt in FLOATS:
        x = _randn(B, 20, 4, seed=5, dtype=dt)
        s[f"kmeans-{dt}"] = Sample("kmeans", (x, x[:, :3].clone(), 5))
    xt = _randn(B, 4, 20, seed=6).transpose(1, 2)
    s["kmeans-noncontig"] = Sample("kmeans", (xt, xt[:, ::5], 3))
    x = _randn(1, 5, 3, seed=7)
    s["kmeans-k-eq-n"] = Sample("kmeans", (x, x.flip(1).clone(), 1))

    # select
    tokens = _randn(B, N, C, seed=8)
    ent = _rand(B, N, 4, seed=9)
    edge = _rand(B, N, seed=10)
    s["select-no-edge"] = Sample("select", (tokens, ent, None, 0.5, 1, 0.5, "low", 4, 5))
    s["select-edge"] = Sample("select", (tokens, ent, edge, 0.7, 1, 0.3, "high", 8, 10))
    s["select-fp16"] = Sample("select", (tokens.half(), ent, edge.half(), 0.5, 1, 0.5, "low", 3, 2))
    s["select-bf16"] = Sample("select", (tokens.bfloat16(), ent.bfloat16(), edge.bfloat16(), 0.5, 2, 0.5, "low", 3, 2))
    s["select-noncontig"] = Sample(
        "select", (_noncontig(tokens), _noncontig(ent), _rand(N, B, seed=11).t(), 0.6, 1, 0.5, "low", 4, 3)
    )
    s["select-P0-keepall"] = Sample("select", (tokens, ent, edge, 1.0, 0, 1.0, "high", 20, 1))
    s["select-tiny-budget"] = Sample("select", (tokens, ent, edge, 0.01, N - 2, 0.0, "low", 8, 10))

    # prune
    attn = _attn(B, H, N, seed=12)
    s["prune-defaults"] = Sample("prune", (tokens, attn))
    s["prune-edge-kwarg"] = Sample("prune", (tokens, attn), {"edge": edge})
    s["prune-all-positional"] = Sample("prune", (tokens, attn, edge, 0.5, 2, [0.5, 2.0], 0.25, "high", 3, 4))
    s["prune-all-kwargs"] = Sample(
        "prune",
        (tokens, attn),
        dict(edge=None, keep_ratio=0.4, num_protected=0, qs=[1.0], alpha=1.0, entropy_mode="low", clusters=2, iters=1),
    )
    s["prune-fp16"] = Sample("prune", (tokens.half(), _attn(B, H, N, seed=13, dtype=torch.float16), edge.half()))
    s["prune-bf16"] = Sample(
        "prune", (tokens.bfloat16(), _attn(B, H, N, seed=14, dtype=torch.bfloat16)), {"keep_ratio": 0.5}
    )
    s["prune-noncontig"] = Sample(
        "prune", (_noncontig(tokens), _attn_transposed(B, H, N, seed=15), _noncontig(edge[..., None])[..., 0])
    )
    s["prune-N50"] = Sample("prune", (_randn(1, 50, 8, seed=16), _attn(1, 3, 50, seed=17), _rand(1, 50, seed=18), 0.3))

    # gather_tokens
    x = _randn(B, N, C, seed=19)
    idx = _unique_idx(B, N, 5, seed=20)
    for dt in FLOATS:
        s[f"gather-{dt}"] = Sample("gather_tokens", (x.to(dt), idx))
    s["gather-int32"] = Sample("gather_tokens", (x, idx.int()))
    s["gather-noncontig"] = Sample("gather_tokens", (_noncontig(x), idx.t().contiguous().t()))
    s["gather-transposed"] = Sample("gather_tokens", (_randn(B, C, N, seed=27).transpose(1, 2), idx))
    s["gather-repeated"] = Sample("gather_tokens", (x, torch.tensor([[0, 0, 3], [11, 11, 11]])))
    s["gather-K0"] = Sample("gather_tokens", (x, torch.zeros(B, 0, dtype=torch.int64)))

    # scatter_tokens
    full = _randn(B, N, C, seed=21)
    xs = _randn(B, 5, C, seed=22)
    for dt in FLOATS:
        s[f"scatter-{dt}"] = Sample("scatter_tokens", (full.to(dt), xs.to(dt), idx))
    s["scatter-int32"] = Sample("scatter_tokens", (full, xs, idx.int()))
    s["scatter-noncontig"] = Sample("scatter_tokens", (_noncontig(full), _noncontig(xs), idx.t().contiguous().t()))
    s["scatter-transposed"] = Sample(
        "scatter_tokens", (_randn(B, C, N, seed=25).transpose(1, 2), _randn(B, C, 5, seed=26).transpose(1, 2), idx)
    )
    s["scatter-K0"] = Sample("scatter_tokens", (full, xs[:, :0], idx[:, :0]))
    s["scatter-KN"] = Sample("scatter_tokens", (full, _randn(B, N, C, seed=23), _unique_idx(B, N, N, seed=24)))

    # reconstruct_stage
    keep_idx, prune_idx, cluster_id = python_ref.select(tokens, ent, edge, 0.5, 1, 0.5, "low", 3, 2)
    k = keep_idx.shape[1]
    fin = _randn(B, k, C, seed=28)
    for dt in FLOATS:
        s[f"recon-{dt}"] = Sample(
            "reconstruct_stage", (fin.to(dt), tokens.to(dt), keep_idx, prune_idx, cluster_id, 3, "residual")
        )
    s["recon-frozen"] = Sample("reconstruct_stage", (fin, tokens, keep_idx, prune_idx, cluster_id, 3, "frozen"))
    for dt in FLOATS:
        s[f"recon-nearest-{dt}"] = Sample(
            "reconstruct_stage", (fin.to(dt), tokens.to(dt), keep_idx, prune_idx, cluster_id, 3, "nearest")
        )

    # select_tokens
    for alloc in ("ranked", "proportional"):
        s[f"select-tokens-{alloc}"] = Sample("select", (tokens, ent, edge, 0.5, 1, 0.5, "high", 4, 5, alloc))
    s["select-tokens-fp16-noncontig"] = Sample(
        "select", (_noncontig(tokens).half(), _noncontig(ent), None, 0.3, 2, 0.5, "low", 3, 2, "proportional")
    )
    s["recon-noncontig"] = Sample(
        "reconstruct_stage",
        (_noncontig(fin), _noncontig(tokens), keep_idx.t().contiguous().t(), prune_idx, cluster_id.long(), 3, "residual"),
    )
    s["recon-keepall"] = Sample(
        "reconstruct_stage",
        (tokens, tokens, torch.arange(N).repeat(B, 1), torch.zeros(B, 0, dtype=torch.int64), cluster_id, 3, "residual"),
    )
    return s


SAMPLES = _samples()


def test_samples_cover_every_op():
    assert {smp.op for smp in SAMPLES.values()} == set(OP_NAMES)
    assert set(registry.op_names()) == set(OP_NAMES)


def _call(op: str, args, kwargs=None):
    return getattr(ops, op)(*args, **(kwargs or {}))


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _fakeify(mode: FakeTensorMode, v):
    return mode.from_tensor(v) if isinstance(v, torch.Tensor) else v


def _call_fake(op: str, args, kwargs=None):
    mode = FakeTensorMode()
    fargs = tuple(_fakeify(mode, a) for a in args)
    fkwargs = {k: _fakeify(mode, v) for k, v in (kwargs or {}).items()}
    with mode:
        return _call(op, fargs, fkwargs)


# --------------------------------------------------------------------------- schemas
SPEC_SCHEMAS = {
    "tsallis_entropy": "lvtp::tsallis_entropy(Tensor attn, float[] qs) -> Tensor",
    "attention_entropy": (
        "lvtp::attention_entropy(Tensor q, Tensor k, Tensor v, float[] qs, float scale) -> (Tensor out, Tensor ent)"
    ),
    "patch_edge_energy": "lvtp::patch_edge_energy(Tensor image, int patch) -> Tensor",
    "kmeans": "lvtp::kmeans(Tensor x, Tensor init, int iters) -> (Tensor centroids, Tensor assign)",
    "select": (
        "lvtp::select(Tensor tokens, Tensor ent, Tensor? edge, float keep_ratio, int num_protected, float alpha, "
        "str entropy_mode, int clusters, int iters, str allocation=\"ranked\", str precision=\"exact\") -> (Tensor keep_idx, Tensor prune_idx, "
        "Tensor cluster_id)"
    ),
    "prune": (
        "lvtp::prune(Tensor tokens, Tensor attn, Tensor? edge=None, float keep_ratio=0.7, int num_protected=1, "
        'float[] qs=[0.5, 1.0, 2.0, 3.0], float alpha=0.5, str entropy_mode="low", int clusters=8, int iters=10) '
        "-> (Tensor kept, Tensor keep_idx, Tensor prune_idx, Tensor cluster_id)"
    ),
    "gather_tokens": "lvtp::gather_tokens(Tensor x, Tensor idx) -> Tensor",
    "scatter_tokens": "lvtp::scatter_tokens(Tensor full, Tensor x, Tensor idx) -> Tensor",
    "reconstruct_stage": (
        "lvtp::reconstruct_stage(Tensor full, Tensor x_stage, Tensor keep_idx, Tensor prune_idx, "
        "Tensor cluster_id, int clusters, str mode) -> Tensor"
    ),
}


@pytest.mark.parametrize("op", OP_NAMES)
def test_schema_matches_spec(op):
    registered = getattr(ops, op).default._schema
    assert registered == torch._C.parse_schema(SPEC_SCHEMAS[op]), str(registered)
    assert tuple(a.name for a in registered.arguments) == ARG_NAMES[op]


def test_prune_defaults_are_the_spec_defaults():
    tokens, attn = _randn(2, 14, 5, seed=3), _attn(2, 2, 14, seed=4)
    omitted = ops.prune(tokens, attn)
    explicit = ops.prune(tokens, attn, None, 0.7, 1, [0.5, 1.0, 2.0, 3.0], 0.5, "low", 8, 10)
    ref = python_ref.prune(tokens, attn, None, 0.7, 1, [0.5, 1.0, 2.0, 3.0], 0.5, "low", 8, 10)
    for a, b, r in zip(omitted, explicit, ref):
        assert torch.equal(a, b) and torch.equal(a, r)
    assert omitted[1].shape == (2, 1 + 9)  # K = floor(0.7 * 13 + 0.5) = 9


# --------------------------------------------------------------------------- 1. opcheck
@pytest.mark.parametrize("name", list(SAMPLES))
def test_opcheck(name):
    smp = SAMPLES[name]
    result = torch.library.opcheck(getattr(ops, smp.op), smp.args, smp.kwargs)
    assert all(v == "SUCCESS" for v in result.values()), result


# --------------------------------------------------------------------------- 3. fake == real
@pytest.mark.parametrize("name", list(SAMPLES))
def test_fake_kernel_matches_real_outputs(name):
    smp = SAMPLES[name]
    real = _as_tuple(_call(smp.op, smp.args, smp.kwargs))
    fake = _as_tuple(_call_fake(smp.op, smp.args, smp.kwargs))
    assert len(real) == len(fake)
    for r, f in zip(real, fake):
        assert f.shape == r.shape, (name, f.shape, r.shape)
        assert f.dtype == r.dtype, (name, f.dtype, r.dtype)
        assert f.device == r.device
        assert f.stride() == r.stride(), (name, f.stride(), r.stride())


@pytest.mark.parametrize("name", list(SAMPLES))
def test_meta_device_matches_real_outputs(name):
    smp = SAMPLES[name]
    real = _as_tuple(_call(smp.op, smp.args, smp.kwargs))
    to_meta = lambda v: v.to("meta") if isinstance(v, torch.Tensor) else v  # noqa: E731
    meta = _as_tuple(_call(smp.op, tuple(map(to_meta, smp.args)), {k: to_meta(v) for k, v in smp.kwargs.items()}))
    assert [(m.shape, m.dtype, m.device.type) for m in meta] == [(r.shape, r.dtype, "meta") for r in real]


def _expected_select_shapes(b, n, p, keep_ratio):
    k = max(1, math.floor(keep_ratio * (n - p) + 0.5))
    return (b, p + k), (b, n - p - k), (b, n)


def _check_select_outputs(keep_idx, prune_idx, cluster_id, b, n, p, keep_ratio):
    ks, ps, cs = _expected_select_shapes(b, n, p, keep_ratio)
    assert tuple(keep_idx.shape) == ks and keep_idx.dtype == torch.int64
    assert tuple(prune_idx.shape) == ps and prune_idx.dtype == torch.int64
    assert tuple(cluster_id.shape) == cs and cluster_id.dtype == torch.int32


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 40),
    p_frac=st.floats(0.0, 1.0),
    keep_ratio=st.one_of(
        st.floats(0.0, 1.0, exclude_min=True), st.sampled_from([1.0, 0.25, 0.5, 0.05, 1e-6, 0.75, 0.35])
    ),
    with_edge=st.booleans(),
)
def test_select_prune_shapes_depend_only_on_n_p_keep_ratio(n, p_frac, keep_ratio, with_edge):
    b, c, h = 2, 3, 2
    p = min(n - 1, int(p_frac * n))
    tokens = _randn(b, n, c, seed=n)
    attn = _attn(b, h, n, seed=n + 1)
    edge = _rand(b, n, seed=n + 2) if with_edge else None
    ent = python_ref.tsallis_entropy(attn, QS)
    sel_args = (tokens, ent, edge, keep_ratio, p, 0.5, "low", 8, 3)
    pr_args = (tokens, attn, edge, keep_ratio, p, QS, 0.5, "low", 8, 3)
    for out in (_call("select", sel_args), _call_fake("select", sel_args)):
        _check_select_outputs(*out, b, n, p, keep_ratio)
    for out in (_call("prune", pr_args), _call_fake("prune", pr_args)):
        kept, keep_idx, prune_idx, cluster_id = out
        _check_select_outputs(keep_idx, prune_idx, cluster_id, b, n, p, keep_ratio)
        assert tuple(kept.shape) == (b, keep_idx.shape[1], c) and kept.dtype == tokens.dtype
    # real outputs: keep_idx ascending with the protected first, prune_idx ascending, a partition of 0..N-1
    keep_idx, prune_idx, cluster_id = _call("select", sel_args)
    for i in range(b):
        ki, pi = keep_idx[i].tolist(), prune_idx[i].tolist()
        assert ki[:p] == list(range(p))
        assert ki == sorted(ki) and pi == sorted(pi)
        assert sorted(ki + pi) == list(range(n))
        assert (cluster_id[i, :p] == -1).all() and (cluster_id[i, p:] >= 0).all()


# --------------------------------------------------------------------------- 4. dtypes
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_output_dtypes(dtype):
    B, H, N, C, D = 2, 2, 10, 5, 4
    attn = _attn(B, H, N, dtype=dtype)
    ent = ops.tsallis_entropy(attn, QS)
    assert ent.dtype == torch.float32 and ent.shape == (B, N, len(QS))

    q, k, v = (_randn(B, H, N, D, seed=i, dtype=dtype) for i in range(3))
    out, ent2 = ops.attention_entropy(q, k, v, QS, D**-0.5)
    assert out.dtype == dtype and out.shape == (B, H, N, D)
    assert ent2.dtype == torch.float32 and ent2.shape == (B, N, len(QS))

    e = ops.patch_edge_energy(_rand(B, 3, 8, 8, dtype=dtype), 4)
    assert e.dtype == torch.float32 and e.shape == (B, 4)

    x = _randn(B, 8, 3, dtype=dtype)
    cent, assign = ops.kmeans(x, x[:, :2].clone(), 3)
    assert cent.dtype == torch.float32 and cent.shape == (B, 2, 3)
    assert assign.dtype == torch.int64 and assign.shape == (B, 8)

    tokens = _randn(B, N, C, dtype=dtype)
    edge = _rand(B, N, dtype=dtype)
    keep_idx, prune_idx, cid = ops.select(tokens, ent, edge, 0.5, 1, 0.5, "low", 3, 2)
    assert keep_idx.dtype == torch.int64 and prune_idx.dtype == torch.int64 and cid.dtype == torch.int32

    kept, keep_idx, prune_idx, cid = ops.prune(tokens, attn, edge)
    assert kept.dtype == dtype
    assert keep_idx.dtype == torch.int64 and prune_idx.dtype == torch.int64 and cid.dtype == torch.int32

    g = ops.gather_tokens(tokens, keep_idx)
    assert g.dtype == dtype and torch.equal(g, kept)
    s = ops.scatter_tokens(torch.zeros_like(tokens), kept, keep_idx)
    assert s.dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_inputs_accumulate_in_fp32(dtype):
    # The entropy of a half-precision attention equals the fp32 entropy of the same values.
    attn = _attn(2, 2, 40, seed=3, dtype=dtype)
    got = ops.tsallis_entropy(attn, QS)
    want = python_ref.tsallis_entropy(attn.float(), QS)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    q, k, v = (_randn(2, 2, 24, 8, seed=i, dtype=dtype) for i in range(3))
    out, ent = ops.attention_entropy(q, k, v, QS, 8**-0.5)
    out32, ent32 = python_ref.attention_entropy(q.float(), k.float(), v.float(), QS, 8**-0.5)
    torch.testing.assert_close(ent, ent32, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, out32.to(dtype), rtol=0, atol=0)  # one rounding, at the end
    x = _randn(2, 30, 4, seed=5, dtype=dtype)
    cent, assign = ops.kmeans(x, x[:, :4].clone(), 5)
    cent32, assign32 = python_ref.kmeans(x.float(), x[:, :4].float(), 5)
    torch.testing.assert_close(cent, cent32, rtol=1e-6, atol=1e-6)
    assert torch.equal(assign, assign32)
    img = _rand(1, 3, 16, 16, seed=4, dtype=dtype)
    torch.testing.assert_close(ops.patch_edge_energy(img, 4), python_ref.patch_edge_energy(img.float(), 4), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- 2. torch.compile
@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _assert_same(got, want):
    got, want = _as_tuple(got), _as_tuple(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        if g.dtype.is_floating_point:
            torch.testing.assert_close(g, w)
        else:
            assert torch.equal(g, w)


def test_compile_prune_gather_scatter(fresh_dynamo):
    def f(tokens, attn, edge, full):
        kept, keep_idx, prune_idx, cid = ops.prune(tokens, attn)  # defaults omitted
        kept2, keep2, prune2, cid2 = ops.prune(tokens, attn, edge, 0.5, 2, [0.5, 2.0], 0.3, "high", 3, 4)
        pruned = ops.gather_tokens(tokens, prune2)
        back = ops.scatter_tokens(full, kept2, keep2)
        back = ops.scatter_tokens(back, pruned, prune2)
        return kept, keep_idx, prune_idx, cid, kept2, keep2, prune2, cid2, pruned, back

    cf = torch.compile(f, fullgraph=True)
    for n in (20, 27):  # the second size recompiles with dynamic shapes
        tokens, attn, edge = _randn(2, n, 6, seed=n), _attn(2, 2, n, seed=n + 1), _rand(2, n, seed=n + 2)
        full = torch.zeros(2, n, 6)
        want = f(tokens, attn, edge, full)
        got = cf(tokens, attn, edge, full)
        _assert_same(got, want)
        assert torch.equal(got[-1], tokens)  # gather + scatter round trip


def test_compile_raises_named_errors(fresh_dynamo):
    # Shape-level errors fire from the fake kernel while tracing (dynamo wraps them in a
    # RuntimeError that keeps the message); value-level ones from the real kernel at run time.
    def f(tokens, attn, keep_ratio):
        return ops.prune(tokens, attn, None, keep_ratio)

    cf = torch.compile(f, fullgraph=True)
    tokens, attn = _randn(2, 10, 4), _attn(2, 2, 10)
    with pytest.raises((ValueError, RuntimeError), match="keep_ratio"):
        cf(tokens, attn, 0.0)
    bad = attn.clone()
    bad[1, 0, 2, 3] = NAN
    with pytest.raises(ValueError, match=r"\battn\b.*NaN"):
        cf(tokens, bad, 0.5)


def test_compile_entropy_and_edges(fresh_dynamo):
    def f(q, k, v, attn, image):
        out, ent = ops.attention_entropy(q, k, v, [0.5, 1.0, 2.0], 0.5)
        ent2 = ops.tsallis_entropy(attn, QS)
        edge = ops.patch_edge_energy(image, 4)
        return out, ent, ent2, edge

    args = (
        *(_randn(2, 2, 16, 4, seed=i) for i in range(3)),
        _attn_transposed(2, 2, 16),
        _rand(2, 3, 16, 16, seed=5),
    )
    _assert_same(torch.compile(f, fullgraph=True)(*args), f(*args))


def test_compile_kmeans_select(fresh_dynamo):
    def f(x, init, tokens, ent, edge):
        c, a = ops.kmeans(x, init, 5)
        s1 = ops.select(tokens, ent, None, 0.5, 1, 0.5, "low", 4, 3)
        s2 = ops.select(tokens, ent, edge, 0.7, 0, 0.2, "high", 8, 10)
        return (c, a) + tuple(s1) + tuple(s2)

    x = _randn(2, 20, 4, seed=1)
    args = (x, x[:, :4].clone(), _randn(2, 18, 6, seed=2), _rand(2, 18, 4, seed=3), _rand(2, 18, seed=4))
    _assert_same(torch.compile(f, fullgraph=True)(*args), f(*args))


# --------------------------------------------------------------------------- 5. bad inputs
NAN, INF = float("nan"), float("inf")


def _base_args(op: str) -> Dict[str, Any]:
    B, H, N, C, D = 2, 2, 10, 4, 4
    tokens = _randn(B, N, C, seed=1)
    attn = _attn(B, H, N, seed=2)
    x = _randn(B, 8, 3, seed=3)
    return {
        "tsallis_entropy": dict(attn=attn, qs=list(QS)),
        "attention_entropy": dict(
            q=_randn(B, H, N, D, seed=4), k=_randn(B, H, N, D, seed=5), v=_randn(B, H, N, D, seed=6), qs=list(QS), scale=0.5
        ),
        "patch_edge_energy": dict(image=_rand(B, 3, 8, 8, seed=7), patch=4),
        "kmeans": dict(x=x, init=x[:, :3].clone(), iters=3),
        "select": dict(
            tokens=tokens, ent=_rand(B, N, 4, seed=8), edge=_rand(B, N, seed=9), keep_ratio=0.5, num_protected=1,
            alpha=0.5, entropy_mode="low", clusters=3, iters=2, allocation="proportional", precision="exact",
        ),
        "prune": dict(
            tokens=tokens, attn=attn, edge=_rand(B, N, seed=9), keep_ratio=0.5, num_protected=1, qs=list(QS),
            alpha=0.5, entropy_mode="low", clusters=3, iters=2,
        ),
        "gather_tokens": dict(x=tokens, idx=_unique_idx(B, N, 4, seed=10)),
        "scatter_tokens": dict(full=tokens, x=_randn(B, 4, C, seed=11), idx=_unique_idx(B, N, 4, seed=12)),
        "reconstruct_stage": _recon_args(tokens),
    }[op]


def _recon_args(tokens):
    keep_idx, prune_idx, cluster_id = python_ref.select(
        tokens, _rand(tokens.shape[0], tokens.shape[1], 4, seed=13), None, 0.5, 1, 0.5, "low", 3, 2
    )
    full = _randn(tokens.shape[0], keep_idx.shape[1], tokens.shape[2], seed=14)
    return dict(
        full=full, x_stage=tokens, keep_idx=keep_idx, prune_idx=prune_idx, cluster_id=cluster_id, clusters=3,
        mode="residual",
    )


N_BASE = 10  # N of _base_args


def _set(name, index, value):
    def f(a):
        t = a[name].clone()
        t[index] = value
        return t

    return f


def _first(name, value):
    def f(a):
        t = a[name].clone()
        t.view(-1)[0] = value
        return t

    return f


def _dtype(name, dtype):
    return lambda a: a[name].to(dtype)


def _grad(name):
    return lambda a: a[name].clone().requires_grad_(True)


def _meta(name):
    return lambda a: a[name].to("meta")


def _rank_down(name):
    return lambda a: a[name][0]


def _rank_up(name):
    return lambda a: a[name][None]


def _batch1(name):
    return lambda a: a[name][:1]


def _drop_last_token(name, dim=1):
    return lambda a: a[name].narrow(dim, 0, a[name].shape[dim] - 1)


class Bad:
    """One invalid call: ``op`` with ``overrides`` of its valid arguments must raise naming ``arg``."""

    def __init__(self, op: str, arg: str, shape_level: bool, also: Optional[str] = None, exc=ValueError, **overrides):
        self.op, self.arg, self.shape_level, self.also, self.exc = op, arg, shape_level, also, exc
        self.overrides: Dict[str, Any] = overrides

    def args(self) -> tuple:
        a = _base_args(self.op)
        new = {k: (v(a) if callable(v) else v) for k, v in self.overrides.items()}
        a.update(new)
        return tuple(a[n] for n in ARG_NAMES[self.op])


def _empty_batch(op: str) -> Dict[str, Callable]:
    """Every tensor argument of ``op`` with a zero-size batch."""
    a = _base_args(op)
    return {n: (lambda a, n=n: a[n][:0]) for n, v in a.items() if isinstance(v, torch.Tensor)}


def _bad_cases() -> List:
    c: Dict[str, Bad] = {}

    def common(op, float_args, first):
        """Dtype, requires-grad, zero-batch and device cases shared by every op."""
        for name in float_args:
            c[f"{op}-{name}-int"] = Bad(op, name, True, **{name: _dtype(name, torch.int64)})
            c[f"{op}-{name}-bool"] = Bad(op, name, True, **{name: lambda a, name=name: a[name] > 0})
            c[f"{op}-{name}-requires-grad"] = Bad(op, name, True, also="grad", **{name: _grad(name)})
        c[f"{op}-empty-batch"] = Bad(op, first, True, also="batch", **_empty_batch(op))
        # tensors on different devices ('meta' stands in for a second device)
        for moved in [n for n in ARG_NAMES[op] if n != first and isinstance(_base_args(op)[n], torch.Tensor)]:
            c[f"{op}-{moved}-on-meta"] = Bad(
                op, moved, True, also="meta|device", exc=(ValueError, RuntimeError), **{moved: _meta(moved)}
            )

    def nonfinite(op, name):
        c[f"{op}-{name}-nan"] = Bad(op, name, False, also="NaN|Inf|finite", **{name: _first(name, NAN)})
        c[f"{op}-{name}-inf"] = Bad(op, name, False, also="NaN|Inf|finite", **{name: _first(name, INF)})
        c[f"{op}-{name}-neg-inf"] = Bad(op, name, False, also="NaN|Inf|finite", **{name: _first(name, -INF)})

    def qs_cases(op):
        for label, qs in (("empty", []), ("zero", [0.0]), ("negative", [1.0, -1.0]), ("nan", [NAN, 2.0]), ("inf", [INF])):
            c[f"{op}-qs-{label}"] = Bad(op, "qs", True, qs=qs)

    def probability_cases(op):
        nonfinite(op, "attn")
        # a row that sums to 2, a row that sums to 0.5, a row with a negative entry that sums to 1
        c[f"{op}-attn-row-sum-2"] = Bad(op, "attn", False, attn=lambda a: a["attn"] * 2.0)
        c[f"{op}-attn-row-sum-half"] = Bad(op, "attn", False, attn=lambda a: _half_row(a["attn"]))
        c[f"{op}-attn-negative"] = Bad(op, "attn", False, also="negative", attn=lambda a: _negative_row(a["attn"]))
        c[f"{op}-attn-rank3"] = Bad(op, "attn", True, attn=_rank_down("attn"))
        c[f"{op}-attn-rank5"] = Bad(op, "attn", True, attn=_rank_up("attn"))
        c[f"{op}-attn-not-square"] = Bad(op, "attn", True, attn=lambda a: _renorm(a["attn"][..., :-1]))

    def select_scalars(op):
        for v in (0.0, -0.1, 1.5, NAN, INF):
            c[f"{op}-keep_ratio-{v}"] = Bad(op, "keep_ratio", True, keep_ratio=v)
        for v in (-1, N_BASE, N_BASE + 5):
            c[f"{op}-num_protected-{v}"] = Bad(op, "num_protected", True, num_protected=v)
        for v in (-0.1, 1.1, NAN):
            c[f"{op}-alpha-{v}"] = Bad(op, "alpha", True, alpha=v)
        c[f"{op}-entropy_mode-medium"] = Bad(op, "entropy_mode", True, entropy_mode="medium")
        c[f"{op}-entropy_mode-LOW"] = Bad(op, "entropy_mode", True, entropy_mode="LOW")
        for v in (0, -2):
            c[f"{op}-clusters-{v}"] = Bad(op, "clusters", True, clusters=v)
            c[f"{op}-iters-{v}"] = Bad(op, "iters", True, iters=v)

    def edge_cases(op):
        nonfinite(op, "edge")
        c[f"{op}-edge-rank3"] = Bad(op, "edge", True, edge=_rank_up("edge"))
        c[f"{op}-edge-rank1"] = Bad(op, "edge", True, edge=_rank_down("edge"))
        c[f"{op}-edge-batch"] = Bad(op, "edge", True, edge=_batch1("edge"))
        c[f"{op}-edge-N"] = Bad(op, "edge", True, edge=_drop_last_token("edge"))

    # tsallis_entropy
    op = "tsallis_entropy"
    common(op, ["attn"], "attn")
    probability_cases(op)
    qs_cases(op)

    # attention_entropy
    op = "attention_entropy"
    common(op, ["q", "k", "v"], "q")
    for name in ("q", "k", "v"):
        nonfinite(op, name)
        c[f"{op}-{name}-rank3"] = Bad(op, name, True, **{name: _rank_down(name)})
    c[f"{op}-k-N"] = Bad(op, "k", True, k=_drop_last_token("k", 2))
    c[f"{op}-v-batch"] = Bad(op, "v", True, v=_batch1("v"))
    c[f"{op}-k-headdim"] = Bad(op, "k", True, k=lambda a: a["k"][..., :-1])
    c[f"{op}-k-dtype"] = Bad(op, "k", True, k=_dtype("k", torch.float16))
    qs_cases(op)
    for v in (0.0, -1.0, NAN, INF):
        c[f"{op}-scale-{v}"] = Bad(op, "scale", True, scale=v)

    # patch_edge_energy
    op = "patch_edge_energy"
    common(op, ["image"], "image")
    nonfinite(op, "image")
    c[f"{op}-image-rank3"] = Bad(op, "image", True, image=_rank_down("image"))
    c[f"{op}-image-4ch"] = Bad(op, "image", True, image=lambda a: torch.cat([a["image"], a["image"][:, :1]], 1))
    c[f"{op}-image-1ch"] = Bad(op, "image", True, image=lambda a: a["image"][:, :1])
    for v in (0, -1):
        c[f"{op}-patch-{v}"] = Bad(op, "patch", True, patch=v)
    c[f"{op}-patch-too-large"] = Bad(op, "patch", True, patch=9)
    c[f"{op}-patch-taller-than-image"] = Bad(op, "patch", True, image=lambda a: _rand(2, 3, 3, 40), patch=4)

    # kmeans
    op = "kmeans"
    common(op, ["x", "init"], "x")
    nonfinite(op, "x")
    nonfinite(op, "init")
    c[f"{op}-x-rank2"] = Bad(op, "x", True, x=_rank_down("x"))
    c[f"{op}-init-rank4"] = Bad(op, "init", True, init=_rank_up("init"))
    c[f"{op}-init-batch"] = Bad(op, "init", True, init=_batch1("init"))
    c[f"{op}-init-d"] = Bad(op, "init", True, init=lambda a: a["init"][..., :-1])
    c[f"{op}-k-gt-n"] = Bad(op, "init", True, init=lambda a: torch.cat([a["x"], a["x"][:, :1]], 1))
    c[f"{op}-k-zero"] = Bad(op, "init", True, init=lambda a: a["init"][:, :0])
    for v in (0, -1):
        c[f"{op}-iters-{v}"] = Bad(op, "iters", True, iters=v)

    # select
    op = "select"
    common(op, ["tokens", "ent", "edge"], "tokens")
    nonfinite(op, "tokens")
    nonfinite(op, "ent")
    edge_cases(op)
    c[f"{op}-tokens-rank2"] = Bad(op, "tokens", True, tokens=_rank_down("tokens"))
    c[f"{op}-ent-rank2"] = Bad(op, "ent", True, ent=lambda a: a["ent"][..., 0])
    c[f"{op}-ent-N"] = Bad(op, "ent", True, ent=_drop_last_token("ent"))
    c[f"{op}-ent-batch"] = Bad(op, "ent", True, ent=_batch1("ent"))
    c[f"{op}-ent-no-orders"] = Bad(op, "ent", True, ent=lambda a: a["ent"][..., :0])
    select_scalars(op)

    # prune
    op = "prune"
    common(op, ["tokens", "attn", "edge"], "tokens")
    nonfinite(op, "tokens")
    probability_cases(op)
    edge_cases(op)
    c[f"{op}-tokens-rank2"] = Bad(op, "tokens", True, tokens=_rank_down("tokens"))
    c[f"{op}-attn-batch"] = Bad(op, "attn", True, attn=_batch1("attn"))
    c[f"{op}-attn-N"] = Bad(op, "attn", True, attn=lambda a: _renorm(a["attn"][:, :, :-1, :-1]))
    c[f"{op}-tokens-N"] = Bad(op, "tokens", True, tokens=_drop_last_token("tokens"), edge=None)
    qs_cases(op)
    select_scalars(op)

    # gather_tokens
    op = "gather_tokens"
    common(op, ["x"], "x")
    c[f"{op}-x-rank2"] = Bad(op, "x", True, x=_rank_down("x"))
    c[f"{op}-idx-rank1"] = Bad(op, "idx", True, idx=_rank_down("idx"))
    c[f"{op}-idx-rank3"] = Bad(op, "idx", True, idx=_rank_up("idx"))
    c[f"{op}-idx-float"] = Bad(op, "idx", True, idx=_dtype("idx", torch.float32))
    c[f"{op}-idx-bool"] = Bad(op, "idx", True, idx=lambda a: a["idx"] > 3)
    c[f"{op}-idx-batch"] = Bad(op, "idx", True, idx=_batch1("idx"))
    c[f"{op}-idx-negative"] = Bad(op, "idx", False, also="-1", idx=_set("idx", (1, 2), -1))
    c[f"{op}-idx-N"] = Bad(op, "idx", False, also=str(N_BASE), idx=_set("idx", (0, 0), N_BASE))
    c[f"{op}-idx-huge"] = Bad(op, "idx", False, idx=_set("idx", (1, 0), 10**9))

    # scatter_tokens
    op = "scatter_tokens"
    common(op, ["full", "x"], "full")
    c[f"{op}-full-rank2"] = Bad(op, "full", True, full=_rank_down("full"))
    c[f"{op}-x-rank2"] = Bad(op, "x", True, x=_rank_down("x"))
    c[f"{op}-idx-rank1"] = Bad(op, "idx", True, idx=_rank_down("idx"))
    c[f"{op}-idx-float"] = Bad(op, "idx", True, idx=_dtype("idx", torch.float32))
    c[f"{op}-idx-bool"] = Bad(op, "idx", True, idx=lambda a: a["idx"] > 3)
    c[f"{op}-x-dtype-fp16"] = Bad(op, "x", True, also="dtype", x=_dtype("x", torch.float16))
    c[f"{op}-x-dtype-bf16"] = Bad(op, "x", True, also="dtype", full=_dtype("full", torch.float16), x=_dtype("x", torch.bfloat16))
    c[f"{op}-x-channels"] = Bad(op, "x", True, x=lambda a: a["x"][..., :-1])
    c[f"{op}-x-batch"] = Bad(op, "x", True, x=_batch1("x"))
    c[f"{op}-idx-batch"] = Bad(op, "idx", True, idx=_batch1("idx"))
    c[f"{op}-idx-K"] = Bad(op, "idx", True, idx=lambda a: a["idx"][:, :-1])
    c[f"{op}-idx-longer-than-N"] = Bad(
        op, "idx", True, x=lambda a: _randn(2, N_BASE + 1, 4), idx=lambda a: torch.arange(N_BASE + 1).repeat(2, 1)
    )
    c[f"{op}-idx-duplicate"] = Bad(op, "idx", False, also="twice|duplicate|unique", idx=lambda a: _dup_row(a["idx"]))
    c[f"{op}-idx-negative"] = Bad(op, "idx", False, also="-1", idx=_set("idx", (0, 1), -1))
    c[f"{op}-idx-N"] = Bad(op, "idx", False, also=str(N_BASE), idx=_set("idx", (1, 1), N_BASE))

    # reconstruct_stage
    op = "reconstruct_stage"
    common(op, ["full", "x_stage"], "full")
    nonfinite(op, "full")
    nonfinite(op, "x_stage")
    c[f"{op}-full-rank2"] = Bad(op, "full", True, full=_rank_down("full"))
    c[f"{op}-x_stage-channels"] = Bad(op, "x_stage", True, x_stage=lambda a: a["x_stage"][..., :-1])
    c[f"{op}-keep_idx-float"] = Bad(op, "keep_idx", True, keep_idx=_dtype("keep_idx", torch.float32))
    c[f"{op}-keep_idx-K"] = Bad(op, "keep_idx", True, keep_idx=lambda a: a["keep_idx"][:, :-1])
    c[f"{op}-prune_idx-partition"] = Bad(op, "prune_idx", True, prune_idx=lambda a: a["prune_idx"][:, :-1])
    c[f"{op}-cluster_id-N"] = Bad(op, "cluster_id", True, cluster_id=lambda a: a["cluster_id"][:, :-1])
    c[f"{op}-cluster_id-range"] = Bad(op, "cluster_id", False, cluster_id=_set("cluster_id", (0, 1), 3))
    c[f"{op}-cluster_id-below"] = Bad(op, "cluster_id", False, cluster_id=_set("cluster_id", (0, 1), -2))
    c[f"{op}-idx-duplicate"] = Bad(
        op, "keep_idx", False, also="twice|duplicate|unique",
        prune_idx=lambda a: torch.cat([a["keep_idx"][:, -1:], a["prune_idx"][:, 1:]], 1),
    )
    c[f"{op}-idx-N"] = Bad(op, "keep_idx", False, also=str(N_BASE), keep_idx=_set("keep_idx", (1, 1), N_BASE))
    c[f"{op}-clusters-0"] = Bad(op, "clusters", True, clusters=0)
    c[f"{op}-mode"] = Bad(op, "mode", True, mode="mean")

    # select's allocation (the base arguments leave it at its default, "ranked")
    c["select-allocation"] = Bad("select", "allocation", True, allocation="greedy")
    c["select-precision"] = Bad("select", "precision", True, precision="float16")
    return [pytest.param(v, id=k) for k, v in c.items()]


def _renorm(a):
    return a / a.sum(-1, keepdim=True)


def _half_row(attn):
    a = attn.clone()
    a[1, 0, 3] = a[1, 0, 3] * 0.5
    return a


def _negative_row(attn):
    a = attn.clone()
    a[0, 1, 2] = 0.0
    a[0, 1, 2, 0] = 1.25
    a[0, 1, 2, 1] = -0.25  # sums to 1, one negative probability
    return a


def _dup_row(idx):
    i = idx.clone()
    i[1, 3] = i[1, 0]
    return i


BAD_CASES = _bad_cases()


def _check_message(exc_info, case: Bad):
    msg = str(exc_info.value)
    assert re.search(rf"(?<![A-Za-z_]){re.escape(case.arg)}(?![A-Za-z_])", msg), (
        f"error message does not name the argument {case.arg!r}: {msg}"
    )
    if case.also:
        assert re.search(case.also, msg, flags=re.IGNORECASE), f"error message lacks /{case.also}/: {msg}"


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_raises(case: Bad):
    args = case.args()
    with pytest.raises(case.exc) as exc_info:
        _call(case.op, args)
    _check_message(exc_info, case)


SHAPE_LEVEL_CASES = [p for p in BAD_CASES if p.values[0].shape_level]


@pytest.mark.parametrize("case", SHAPE_LEVEL_CASES)
def test_bad_input_raises_from_fake_kernel(case: Bad):
    args = case.args()
    with pytest.raises(case.exc) as exc_info:
        _call_fake(case.op, args)
    _check_message(exc_info, case)


def test_bad_input_matrix_covers_every_op():
    assert {p.values[0].op for p in BAD_CASES} == set(OP_NAMES)
    assert {p.values[0].op for p in SHAPE_LEVEL_CASES} == set(OP_NAMES)


def test_valid_base_args_do_not_raise():
    # Guards the bad-input matrix: each case differs from a valid call only by its override.
    for op in OP_NAMES:
        args = tuple(_base_args(op)[n] for n in ARG_NAMES[op])
        _call(op, args)
        _call_fake(op, args)


@pytest.mark.parametrize(
    "op, name",
    [("gather_tokens", "x"), ("scatter_tokens", "full"), ("scatter_tokens", "x")],
)
@pytest.mark.parametrize("value", [NAN, INF])
def test_gather_scatter_reject_nonfinite_features(op, name, value):
    # Spec: "All ops validate their inputs and raise ... for: ... NaN or Inf".
    a = _base_args(op)
    a[name] = _first(name, value)(a)
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        _call(op, tuple(a[n] for n in ARG_NAMES[op]))


def test_requires_grad_raises_even_under_no_grad():
    x = _randn(2, 6, 3).requires_grad_(True)
    with torch.no_grad(), pytest.raises(ValueError, match=r"\bx\b.*grad"):
        ops.gather_tokens(x, torch.zeros(2, 1, dtype=torch.int64))


# --------------------------------------------------------------------------- 6. dispatch policy
@pytest.fixture
def restore_backends():
    saved = {op: dict(spec.backends) for op, spec in registry.SPECS.items()}
    try:
        yield
    finally:
        for op, spec in registry.SPECS.items():
            spec.backends.clear()
            spec.backends.update(saved[op])


def _recorder(fn, calls):
    """``fn`` that also appends its arguments to ``calls``: a backend whose use is visible."""

    def recording(*args):
        calls.append(args)
        return fn(*args)

    return recording


def _run_all_ops():
    outs = []
    for name in ("tsallis-torch.float32", "attnent-torch.float16", "edge-torch.bfloat16", "kmeans-torch.float32",
                 "select-edge", "prune-all-positional", "gather-int32", "scatter-noncontig"):
        smp = SAMPLES[name]
        outs.append(_as_tuple(_call(smp.op, smp.args, smp.kwargs)))
    return outs


def test_lvtp_impl_ref_and_auto_agree(monkeypatch):
    monkeypatch.delenv("LVTP_IMPL", raising=False)
    default = _run_all_ops()
    monkeypatch.setenv("LVTP_IMPL", "auto")
    auto = _run_all_ops()
    monkeypatch.setenv("LVTP_IMPL", "ref")
    ref = _run_all_ops()
    for d, a, r in zip(default, auto, ref):
        for x, y, z in zip(d, a, r):
            assert torch.equal(x, y)
            if x.is_floating_point():  # the compiled kmeans sums in another order than python_ref
                torch.testing.assert_close(x, z, rtol=1e-5, atol=1e-6)
            else:  # indices and cluster ids: exactly
                assert torch.equal(x, z)
    # and equal to python_ref called directly
    smp = SAMPLES["prune-all-positional"]
    for x, y in zip(ref[5], python_ref.prune(*smp.args)):
        assert torch.equal(x, y)


@pytest.mark.parametrize("value", ["bogus", "REF2", "python"])
def test_lvtp_impl_bogus_raises(monkeypatch, value):
    monkeypatch.setenv("LVTP_IMPL", value)
    with pytest.raises(ValueError, match="LVTP_IMPL"):
        registry.requested_impl()
    smp = SAMPLES["gather-torch.float32"]
    with pytest.raises(ValueError, match="LVTP_IMPL"):
        _call(smp.op, smp.args)


def test_lvtp_impl_case_and_empty(monkeypatch):
    monkeypatch.setenv("LVTP_IMPL", " Ref ")
    assert registry.requested_impl() == "ref"
    monkeypatch.setenv("LVTP_IMPL", "")
    assert registry.requested_impl() == "auto"


def _auto_cpu(op: str) -> str:
    """What auto picks on the CPU: the C++ op for the clustering and scoring ops (and prune,
    which composes select) when the extension is built, else the reference."""
    from lvtp_kernels import _ext

    cpp_ops = ("kmeans", "select", "prune", "attention_entropy", "patch_edge_energy",
               "reconstruct_stage", "gather_tokens")
    return "cpp" if op in cpp_ops and _ext.status()["cpp"][0] else "ref"


@pytest.mark.parametrize("impl", [None, "auto", "ref"])
def test_choose_backend_cpu(monkeypatch, impl):
    if impl is None:
        monkeypatch.delenv("LVTP_IMPL", raising=False)
    else:
        monkeypatch.setenv("LVTP_IMPL", impl)
    for op in OP_NAMES:
        assert registry.choose_backend(op, "cpu") == ("ref" if impl == "ref" else _auto_cpu(op)), op


def test_backend_table_lists_every_op_and_backend(monkeypatch):
    monkeypatch.delenv("LVTP_IMPL", raising=False)
    table = registry.backend_table()
    assert [row["op"] for row in table] == list(OP_NAMES)
    for row in table:
        assert set(row["backends"]) == set(registry.BACKENDS) == {"ref", "triton", "cpp", "cuda"}
        assert row["chosen"]["cpu"] == _auto_cpu(row["op"])
        assert row["backends"]["ref"].startswith("on")
        for name, status in row["backends"].items():
            assert status.startswith("on") or re.match(r"off: \S", status), (row["op"], name, status)


def test_unavailable_forced_backend_raises_with_reason(monkeypatch, restore_backends):
    op = "gather_tokens"
    reason = "no test accelerator in this process"
    calls = []

    def fn(*args):
        calls.append(args)
        return python_ref.gather_tokens(*args)

    registry.register_backend(op, "cpp", fn, devices=("cpu",), available=lambda: (False, reason))
    smp = SAMPLES["gather-torch.float32"]

    # auto skips it (it is unavailable) and backend_table says why it is off
    monkeypatch.setenv("LVTP_IMPL", "auto")
    assert registry.choose_backend(op, "cpu") == "ref"
    assert torch.equal(_call(smp.op, smp.args), python_ref.gather_tokens(*smp.args))
    row = next(r for r in registry.backend_table() if r["op"] == op)
    assert row["backends"]["cpp"] == f"off: {reason}"

    # forced: raises, never falls back silently
    monkeypatch.setenv("LVTP_IMPL", "cpp")
    with pytest.raises(RuntimeError, match=re.escape(reason)):
        registry.choose_backend(op, "cpu")
    with pytest.raises(RuntimeError, match=re.escape(reason)):
        _call(smp.op, smp.args)
    assert calls == []
    # the other ops (no cpp backend) keep their automatic choice
    assert registry.choose_backend("scatter_tokens", "cpu") == "ref"


def test_forced_available_backend_is_the_one_called(monkeypatch, restore_backends):
    op = "tsallis_entropy"
    calls = []
    recording = _recorder(python_ref.tsallis_entropy, calls)

    registry.register_backend(op, "triton", recording, devices=("cpu",))
    smp = SAMPLES["tsallis-transposed"]

    monkeypatch.setenv("LVTP_IMPL", "ref")
    want = _call(smp.op, smp.args)
    assert calls == []

    monkeypatch.setenv("LVTP_IMPL", "triton")
    assert registry.choose_backend(op, "cpu") == "triton"
    assert registry.choose_backend("kmeans", "cpu") == _auto_cpu("kmeans")  # ops without it keep the automatic choice
    got = _call(smp.op, smp.args)
    assert len(calls) == 1
    assert calls[0][0] is not None and torch.equal(calls[0][0], smp.args[0]) and list(calls[0][1]) == [1.0]
    assert torch.equal(got, want)
    row = next(r for r in registry.backend_table() if r["op"] == op)
    assert row["backends"]["triton"] == "on (cpu)"

    # auto on the CPU does not pick triton (AUTO_ORDER for cpu is cpp, ref)
    monkeypatch.setenv("LVTP_IMPL", "auto")
    _call(smp.op, smp.args)
    assert len(calls) == 1


def test_auto_prefers_available_cpp_on_cpu(monkeypatch, restore_backends):
    calls = []
    recording = _recorder(python_ref.scatter_tokens, calls)

    registry.register_backend("scatter_tokens", "cpp", recording, devices=("cpu",))
    monkeypatch.delenv("LVTP_IMPL", raising=False)
    assert registry.choose_backend("scatter_tokens", "cpu") == "cpp"
    smp = SAMPLES["scatter-torch.float32"]
    assert torch.equal(_call(smp.op, smp.args), python_ref.scatter_tokens(*smp.args))
    assert len(calls) == 1


def test_register_backend_rejects_unknown_names(restore_backends):
    with pytest.raises(ValueError, match="op"):
        registry.register_backend("softmax", "ref", python_ref.gather_tokens)
    with pytest.raises(ValueError, match="backend"):
        registry.register_backend("gather_tokens", "numba", python_ref.gather_tokens)


def test_dynamic_shapes_do_not_specialise_on_n():
    """The fake kernels keep the select/prune budget symbolic: one graph serves every N."""
    torch._dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm

    f = torch.compile(lambda t, a: ops.prune(t, a, None, 0.5, 1)[1], backend=backend, dynamic=True, fullgraph=True)
    for n in (20, 31, 47):
        t = torch.randn(2, n, 8)
        a = torch.softmax(torch.randn(2, 2, n, n), -1)
        out = f(t, a)
        assert torch.equal(out, ops.prune(t, a, None, 0.5, 1)[1])
    assert len(graphs) == 1


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: ops.tsallis_entropy(torch.zeros(1, 0, 5, 5), [1.0]), "attn"),
        (lambda: ops.tsallis_entropy(torch.zeros(1, 2, 0, 0), [1.0]), "attn"),
        (lambda: ops.prune(torch.randn(1, 5, 3), torch.zeros(1, 0, 5, 5)), "attn"),
        (lambda: ops.prune(torch.randn(1, 5, 0), torch.full((1, 1, 5, 5), 0.2)), "tokens"),
        (lambda: ops.attention_entropy(*(torch.randn(1, 1, 0, 4) for _ in range(3)), [1.0], 0.5), "q"),
        (lambda: ops.kmeans(torch.randn(1, 4, 0), torch.randn(1, 2, 0), 1), "x"),
        (lambda: ops.select(torch.randn(1, 4, 3), torch.rand(1, 4, 0), None, 0.5, 1, 0.5, "low", 2, 1), "ent"),
    ],
)
def test_empty_dimensions_are_rejected_by_name(call, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b.*empty dimension"):
        call()


def test_prune_composes_its_parts_on_their_own_backends(monkeypatch, restore_backends):
    # A backend for any part of prune (tsallis_entropy, select, gather_tokens) makes prune a
    # composite for it: each part then runs on its own chosen backend.
    calls = []
    recording = _recorder(python_ref.select, calls)

    registry.register_backend("select", "cpp", recording, devices=("cpu",))
    monkeypatch.delenv("LVTP_IMPL", raising=False)
    assert registry.choose_backend("prune", "cpu") == "cpp"
    assert registry.choose_backend("tsallis_entropy", "cpu") == "ref"
    smp = SAMPLES["prune-all-positional"]
    got = _call(smp.op, smp.args, smp.kwargs)
    want = python_ref.prune(*smp.args, **smp.kwargs)
    assert len(calls) == 1
    torch.testing.assert_close(calls[0][1], python_ref.tsallis_entropy(smp.args[1], smp.args[5]), rtol=0, atol=0)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    # forcing ref keeps the pure reference
    monkeypatch.setenv("LVTP_IMPL", "ref")
    _call(smp.op, smp.args, smp.kwargs)
    assert len(calls) == 1
