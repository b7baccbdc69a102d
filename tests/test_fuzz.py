"""Property-based tests (hypothesis) of every ``torch.ops.lvtp`` op on every backend.

For each op and each backend present here (``ref`` = python_ref through the op; ``triton``
under the interpreter on CPU tensors, compiled on CUDA tensors; ``cpp`` = the C++
extension; ``cuda`` = the CUDA extension, only where a GPU exists) the tests draw
random sizes (B, H, N, C, D, k, qs, keep_ratio, num_protected, ...), dtypes, and a
random memory layout for every input tensor (storage offset, steps, permuted strides,
stride-0 batch), run the op through ``torch.ops.lvtp`` with ``LVTP_IMPL=<backend>`` and
check:

* agreement with ``python_ref`` computed on the very same views: exact (``torch.equal``)
  for indices, cluster ids, gather/scatter/reconstruct copies; floats within the
  tolerances of tests/test_triton_*.py and tests/test_cpp_*.py (re-used below);
* invariants: protected tokens kept, keep/prune a partition of range(N), both ascending,
  output shapes given by (N, P, keep_ratio) alone, entropies and edge energies in [0, 1],
  determinism run to run (bitwise).

Padding outside a view is NaN (floats) or a valid-but-wrong index (integers), so a
kernel that reads outside its view is caught by the comparison.

Near-ties. Selection is discontinuous: where two scores are tied within float rounding a
backend and python_ref may legitimately order them differently.
* k-means: when the reference trajectory has a point whose two nearest centroids are
  within ``KMEANS_TIE_RTOL`` (relative) at some iteration, the example is a near-tie
  (counted as a hypothesis event) and the check is the tie-aware one of
  tests/test_cpp_kmeans.py (assignments equal up to near-ties, inertia within 1e-5)
  instead of equality; otherwise assignments must be equal and centroids within 1e-5.
* prune on the triton backend: its entropies come from the Triton kernel (equal to the
  reference within 1e-5, checked on its own by the tsallis tests), so its indices are
  checked *exactly* against python_ref.select run on the backend's own entropies.
* select (both allocations) on cpp/cuda: bit-identical to python_ref (same float64 operation
  order, same tie rules), so no tie tolerance at all.

Example counts come from the hypothesis profiles in tests/conftest.py ("ci" by default,
``--hypothesis-profile=long`` for release checks).
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional

import pytest
import torch
from hypothesis import assume, event, given
from hypothesis import strategies as st

import lvtp_kernels  # noqa: F401  (registers torch.ops.lvtp.*)
import python_ref
from lvtp_kernels import registry
from lvtp_kernels.ops._common import interpreting
from python_ref import ops as ref
from python_ref import pipeline

from ext_marks import HAVE_CPP, HAVE_CUDA  # noqa: E402

OPS = torch.ops.lvtp
FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
HAVE_GPU = torch.cuda.is_available()

# (backend, device) pairs; each gets a skip mark when it cannot run here.
_SKIP_TRITON_CPU = pytest.mark.skipif(not interpreting(), reason="triton on CPU tensors needs TRITON_INTERPRET=1")
_SKIP_CPP = pytest.mark.skipif(not HAVE_CPP, reason="C++ extension not built")
_SKIP_GPU = pytest.mark.skipif(not HAVE_GPU or interpreting(), reason="needs a CUDA GPU (compiled Triton)")
_SKIP_CUDA = pytest.mark.skipif(not HAVE_CUDA, reason="needs a CUDA GPU and the CUDA extension")
REF = pytest.param("ref", "cpu", id="ref")
TRITON = pytest.param("triton", "cpu", id="triton-interp", marks=_SKIP_TRITON_CPU)
CPP = pytest.param("cpp", "cpu", id="cpp", marks=_SKIP_CPP)
TRITON_GPU = pytest.param("triton", "cuda", id="triton-cuda", marks=_SKIP_GPU)
CUDA = pytest.param("cuda", "cuda", id="cuda", marks=_SKIP_CUDA)

# Tolerances, as in tests/test_triton_*.py and tests/test_cpp_*.py.
TSALLIS_TOL = 1e-5  # test_triton_tsallis.assert_close_fp32: |err| <= tol + tol |want|
EDGE_TOL = 1e-5  # test_triton_edge.assert_close
ATTN_OUT_RTOL, ATTN_OUT_ATOL, ATTN_ENT_ATOL = 1e-5, 5e-6, 1e-5  # test_triton_attention._check_fp32
KMEANS_TIE_RTOL = 1e-6  # test_cpp_kmeans.assert_kmeans_close
ORDERS = [0.5, 1.0, 2.0, 3.0, 0.9, 1.1, 0.99, 1.001, 0.3, 1.5, 2.5, 4.0, 7.0, 0.05]


@contextlib.contextmanager
def backend(op: str, name: str, device: str):
    """LVTP_IMPL=name for the block; checks that ``op`` really runs on that backend."""
    with registry.forced_impl(name):
        assert registry.choose_backend(op, device, warn=False) == name, (op, name, device)
        yield


def _cpu(x):
    if isinstance(x, torch.Tensor):
        return x.cpu()
    if isinstance(x, (tuple, list)):
        return type(x)(_cpu(v) for v in x)
    return x


def _to(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    return x


def run_twice(fn, *args):
    """Calls fn twice; the two results must be bitwise equal (determinism)."""
    a, b = fn(*args), fn(*args)
    ta = a if isinstance(a, tuple) else (a,)
    tb = b if isinstance(b, tuple) else (b,)
    for x, y in zip(ta, tb):
        assert torch.equal(x, y), "two runs of the same call differ"
    return a


# --------------------------------------------------------------------------- data
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@st.composite
def laid_out(draw, t: torch.Tensor, pad=None, batch_broadcast: bool = True) -> torch.Tensor:
    """A view holding t's values (or, for "broadcast", t[:1] expanded over the batch) with
    a random layout: storage offset, steps, a permuted stride order, stride-0 batch.
    The storage outside the view holds ``pad`` (NaN for floats by default)."""
    mode = draw(st.sampled_from(["contiguous", "offset", "steps", "permuted", "all", "broadcast"]))
    if mode == "contiguous":
        return t.clone()
    if mode == "broadcast":
        if not batch_broadcast or t.shape[0] < 2:
            return t.clone()
        return t[:1].clone().expand(t.shape)
    nd = t.dim()
    perm = list(range(nd))
    steps, offs = [1] * nd, [0] * nd
    if mode in ("permuted", "all"):
        perm = draw(st.permutations(range(nd)))
    if mode in ("steps", "all"):
        steps = [draw(st.integers(1, 3)) for _ in range(nd)]
    if mode in ("offset", "all"):
        offs = [draw(st.integers(0, 2)) for _ in range(nd)]
    full_shape = [t.shape[i] * steps[i] + offs[i] for i in range(nd)]
    if pad is None:
        pad = float("nan") if t.dtype.is_floating_point else 0
    buf = torch.full([full_shape[p] for p in perm], pad, dtype=t.dtype)
    inv = [perm.index(i) for i in range(nd)]
    buf = buf.permute(inv)
    view = buf[tuple(slice(o, o + n * s, s) for o, n, s in zip(offs, t.shape, steps))]
    view.copy_(t)
    assert torch.equal(view, t)
    return view


def make_attn(seed: int, b: int, h: int, n: int, dtype, kind: str) -> torch.Tensor:
    """Softmax probability rows: "mixed" (random temperatures, ~10 % of rows ~one-hot),
    "uniform", "onehot" (exact zeros), "sparse" (random exact zeros)."""
    g = _gen(seed)
    if kind == "uniform":
        return torch.full((b, h, n, n), 1.0 / n, dtype=torch.float64).to(dtype)
    if kind == "onehot":
        idx = torch.randint(0, n, (b, h, n, 1), generator=g)
        return torch.zeros(b, h, n, n, dtype=torch.float64).scatter_(-1, idx, 1.0).to(dtype)
    logits = torch.randn(b, h, n, n, generator=g, dtype=torch.float64)
    temp = torch.exp(torch.empty(b, h, n, 1, dtype=torch.float64).uniform_(-3.0, 4.0, generator=g))
    peaked = torch.rand(b, h, n, 1, generator=g, dtype=torch.float64) < 0.1
    logits = logits * torch.where(peaked, torch.full_like(temp, 300.0), temp)
    if kind == "sparse":
        drop = torch.rand(b, h, n, n, generator=g) < 0.4
        drop[..., 0] = False  # every row keeps one entry
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.softmax(logits, dim=-1).to(dtype)


qs_strategy = st.lists(
    st.one_of(st.sampled_from(ORDERS), st.floats(0.05, 6.0, allow_nan=False, allow_infinity=False)),
    min_size=1, max_size=5,
)
dtype_strategy = st.sampled_from(FLOATS)
seed_strategy = st.integers(0, 2**31 - 1)


# --------------------------------------------------------------------------- tsallis_entropy
def assert_close_rel(got, want, tol):
    assert got.shape == want.shape, (got.shape, want.shape)
    err = (got.double() - want.double()).abs()
    bound = tol + tol * want.double().abs()
    assert bool((err <= bound).all()), f"max |err| {err.max().item():.3g} (tol {tol})"


def _smin(n, qs):
    """The smallest normaliser S_q_max over the orders (|q - 1| ln N near q = 1)."""
    return min(math.log(n) if q == 1.0 else abs(math.expm1((1.0 - q) * math.log(n))) for q in qs)


def _unit_interval(t, dtype, attn=None, qs=None, n=None):
    """Normalised entropies and edge energies lie in [0, 1] up to rounding. For given
    attention rows the slack also covers their row-sum error |1 - sum p|: it enters
    S_q / S_q_max divided by S_q_max / (q - 1) ~ |q - 1| ln N, large near q = 1 (an fp16
    row of 1/12 sums to 0.99976: with q = 1.001 both python_ref and the kernel give 1.098).
    With the orders and N given, it also covers fp32 rounding of 1 - sum p^q (a few ulps)
    divided by that normaliser (N = 2, q = 1.001: 3.7e-5 above 1 in python_ref, found by the
    long profile)."""
    slack = 1e-5 if dtype in (torch.float32, torch.float64) else 1e-2
    if attn is not None and attn.shape[-1] > 1:
        n = attn.shape[-1]
        dev = float((attn.double().sum(-1) - 1.0).abs().max())
        slack += 10.0 * dev * n / _smin(n, qs)
    if qs is not None and n is not None and n > 1:
        slack += 16 * torch.finfo(torch.float32).eps / _smin(n, qs)
    assert bool(torch.isfinite(t).all())
    assert float(t.min()) >= -slack and float(t.max()) <= 1 + slack, (float(t.min()), float(t.max()))


@st.composite
def tsallis_inputs(draw):
    b, h, n = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 24))
    dtype = draw(dtype_strategy)
    kind = draw(st.sampled_from(["mixed", "mixed", "uniform", "onehot", "sparse"]))
    attn = draw(laid_out(make_attn(draw(seed_strategy), b, h, n, dtype, kind)))
    return attn, draw(qs_strategy)


@pytest.mark.parametrize("impl,device", [REF, TRITON, TRITON_GPU])
@given(inp=tsallis_inputs())
def test_fuzz_tsallis_entropy(impl, device, inp):
    attn, qs = inp
    if impl == "triton" and device == "cpu" and attn.dtype == torch.bfloat16:
        # Triton 3.6's interpreter converts bf16 subnormals to fp32 wrongly (its
        # _convert_float renormalises the significand but keeps exponent 0); compiled code
        # converts them exactly, and the GPU variant of this test keeps such inputs
        assume(not bool(((attn != 0) & (attn.float().abs() < torch.finfo(torch.float32).tiny)).any()))
    want = ref.tsallis_entropy(attn, qs)
    with backend("tsallis_entropy", impl, device):
        got = _cpu(run_twice(OPS.tsallis_entropy, _to(attn, device), qs))
    assert got.dtype == torch.float32 and got.is_contiguous()
    assert got.shape == (attn.shape[0], attn.shape[2], len(qs))
    if impl == "ref":
        assert torch.equal(got, want)
    elif any(q != 1.0 and abs(q - 1.0) < ref.NEAR_ONE for q in qs):
        # near q = 1 the fp32 reference is itself off by ~1e-5 (its rounding divided by the
        # normaliser |q - 1| ln N): judge both against fp64, the kernel by the flash rule
        # (found by the long profile: kernel 2.3e-5 from fp32 python_ref on an fp32 row)
        gold = ref.tsallis_entropy(attn.double(), qs).double()
        e_kernel = (got.double() - gold).abs().max().item()
        e_ref32 = (want.double() - gold).abs().max().item()
        assert e_kernel <= 2 * e_ref32 + TSALLIS_TOL, (e_kernel, e_ref32)
    else:
        assert_close_rel(got, want, TSALLIS_TOL)
    _unit_interval(got, attn.dtype, attn, qs)
    if attn.shape[2] == 1:
        assert torch.equal(got, torch.zeros_like(got))  # 0/0 := 0


# --------------------------------------------------------------------------- attention_entropy
@st.composite
def attention_inputs(draw):
    b, h, n = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 40))
    d, dv = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    dtype = draw(dtype_strategy)
    std = draw(st.sampled_from([0.1, 1.0, 2.0]))
    g = _gen(draw(seed_strategy))
    q = (torch.randn(b, h, n, d, generator=g) * std).to(dtype)
    k = (torch.randn(b, h, n, d, generator=g) * std).to(dtype)
    v = torch.randn(b, h, n, dv, generator=g).to(dtype)
    q, k, v = draw(laid_out(q)), draw(laid_out(k)), draw(laid_out(v))
    scale = d**-0.5 * draw(st.sampled_from([1.0, 1.0, 0.5, 2.0]))
    return q, k, v, draw(qs_strategy), scale


def _check_attention_fp32(q, k, v, qs, scale, out, ent):
    """tests/test_triton_attention._check_fp32: tight against the fp32 reference, and not
    less accurate than it against the fp64 reference."""
    r_out, r_ent = python_ref.attention_entropy(q, k, v, qs, scale)
    torch.testing.assert_close(out, r_out, rtol=ATTN_OUT_RTOL, atol=ATTN_OUT_ATOL)
    o64, e64 = python_ref.attention_entropy(q.double(), k.double(), v.double(), qs, scale)
    err_kernel = (out.double() - o64).abs().max().item()
    err_ref32 = (r_out.double() - o64).abs().max().item()
    assert err_kernel <= 1.5 * err_ref32 + 1e-6, (err_kernel, err_ref32)
    # Entropies: within ATTN_ENT_ATOL of fp64, or (where fp32 itself cannot get there) at most
    # twice the error of the fp32 reference -- the flash rule. fp32 falls short near q = 1
    # (its softmax rows, ~2e-5) and for small orders on peaked rows: a p that underflows to 0
    # in fp32 but is 1e-46 in fp64 still has p^0.0625 = 1.4e-3 (long-profile finding:
    # q = 0.0625, N = 38, scale 2: fp32 reference and kernel both 9.9e-5 off).
    err_ent = (ent.double() - e64.double()).abs()
    err_ent_ref32 = (r_ent.double() - e64.double()).abs()
    bound = torch.clamp(2.0 * err_ent_ref32, min=ATTN_ENT_ATOL)  # element by element
    assert bool((err_ent <= bound).all()), (err_ent.max().item(), err_ent_ref32.max().item())


def _check_attention_lowp(q, k, v, qs, scale, out, ent):
    """tests/test_triton_attention.test_low_precision_flash_rule: the kernel's error against
    fp64 at most twice that of the same PyTorch code run in the low precision."""
    r_out, r_ent = python_ref.attention_entropy(q.double(), k.double(), v.double(), qs, scale)
    p_lp = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale, dim=-1)
    lp_out = torch.matmul(p_lp, v)
    lp_ent = python_ref.tsallis_entropy(p_lp, qs)
    err_out = (out.double() - r_out).abs().max().item()
    err_ent = (ent.double() - r_ent.double()).abs().max().item()
    base_out = (lp_out.double() - r_out).abs().max().item()
    base_ent = (lp_ent.double() - r_ent.double()).abs().max().item()
    # At the fuzz tests' small N the baseline's error can be luckily small, below the
    # storage rounding itself: the floor is two ulps of the output dtype at the output's
    # magnitude (half an ulp from P rounded to the dtype for P @ V, as FlashAttention does,
    # half from the output's rounding, plus accumulation; e.g. bf16, |out| ~ 1: kernel
    # 0.0061 vs 2 x 0.0028 found, 1.2 ulp).
    ulp = 2 * torch.finfo(out.dtype).eps * float(r_out.abs().max())
    assert err_out <= max(2 * base_out, ulp) + 1e-5, (err_out, base_out, ulp)
    assert err_ent <= 2 * base_ent + 1e-6, (err_ent, base_ent)


@pytest.mark.parametrize("impl,device", [REF, TRITON, CPP, TRITON_GPU])
@given(inp=attention_inputs())
def test_fuzz_attention_entropy(impl, device, inp):
    q, k, v, qs, scale = inp
    with backend("attention_entropy", impl, device):
        out, ent = _cpu(run_twice(OPS.attention_entropy, *(_to(t, device) for t in (q, k, v)), qs, scale))
    b, h, n, _ = q.shape
    assert out.shape == (b, h, n, v.shape[3]) and out.dtype == q.dtype
    assert ent.shape == (b, n, len(qs)) and ent.dtype == torch.float32
    if impl == "ref":
        r_out, r_ent = python_ref.attention_entropy(q, k, v, qs, scale)
        assert torch.equal(out, r_out) and torch.equal(ent, r_ent)
    elif q.dtype == torch.float32:
        _check_attention_fp32(q, k, v, qs, scale, out, ent)
    elif q.dtype == torch.float64:  # computed in fp32 (documented): the fp32 rule on the rounded inputs
        _check_attention_fp32(q.float(), k.float(), v.float(), qs, scale, out.float(), ent)
    else:
        _check_attention_lowp(q, k, v, qs, scale, out, ent)
    _unit_interval(ent, torch.float32 if q.dtype == torch.float64 else q.dtype, qs=qs, n=q.shape[2])
    assert bool(torch.isfinite(out).all())


# --------------------------------------------------------------------------- patch_edge_energy
def make_image(seed, b, height, width, dtype, kind):
    g = _gen(seed)
    if kind == "constant":
        return torch.full((b, 3, height, width), 0.25, dtype=torch.float64).to(dtype)
    if kind == "checker":
        yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        return ((yy + xx) % 2).to(torch.float64).expand(b, 3, height, width).to(dtype)
    if kind == "noise":
        return torch.rand(b, 3, height, width, generator=g, dtype=torch.float64).to(dtype)
    yy = torch.linspace(0, 1, height, dtype=torch.float64)[:, None]
    xx = torch.linspace(0, 1, width, dtype=torch.float64)[None, :]
    img = torch.rand(b, 3, height, width, generator=g, dtype=torch.float64) * 0.2
    img += 0.5 * ((xx + yy) > 0.8)
    img += 0.3 * torch.sin(12 * xx) * torch.cos(7 * yy)
    return (img.clamp(0, 1) * 255 if kind == "bytes" else img.clamp(0, 1)).to(dtype)


@st.composite
def edge_inputs(draw):
    patch = draw(st.integers(1, 8))
    gh, gw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    height = gh * patch + draw(st.integers(0, patch - 1))
    width = gw * patch + draw(st.integers(0, patch - 1))
    b = draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["smooth", "smooth", "noise", "constant", "checker", "bytes"]))
    img = make_image(draw(seed_strategy), b, height, width, draw(dtype_strategy), kind)
    return draw(laid_out(img)), patch


@pytest.mark.parametrize("impl,device", [REF, TRITON, CPP, TRITON_GPU])
@given(inp=edge_inputs())
def test_fuzz_patch_edge_energy(impl, device, inp):
    image, patch = inp
    with backend("patch_edge_energy", impl, device):
        got = _cpu(run_twice(OPS.patch_edge_energy, _to(image, device), patch))
    want = ref.patch_edge_energy(image, patch)
    b, _, height, width = image.shape
    assert got.dtype == torch.float32 and got.shape == (b, (height // patch) * (width // patch))
    if impl == "ref":
        assert torch.equal(got, want)
    else:
        assert_close_rel(got, want, EDGE_TOL)
    _unit_interval(got, torch.float32)


# --------------------------------------------------------------------------- kmeans
def _sqd(x, c):
    x, c = x.double(), c.double()
    return ((x[:, :, None, :] - c[:, None, :, :]) ** 2).sum(-1)


def kmeans_tie_margin(x, init, iters) -> float:
    """The least relative gap, over the reference's iterations and points, between a
    point's nearest and second-nearest centroid (inf when k == 1)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xs = x.to(acc)
    c = init.to(acc).clone()
    k = c.shape[1]
    if k == 1:
        return math.inf
    worst = math.inf
    for it in range(iters + 1):
        d = _sqd(xs, c)
        two = d.topk(2, dim=-1, largest=False).values
        gap = (two[..., 1] - two[..., 0]) / two[..., 1].clamp_min(1e-30)
        worst = min(worst, float(gap.min()))
        if it == iters:
            break
        assign = ref._sq_distances(xs, c).argmin(-1)
        for j in range(k):
            member = (assign == j).to(acc)[..., None]
            count = member.sum(dim=1)
            c[:, j] = torch.where(count > 0, (xs * member).sum(dim=1) / count.clamp_min(1), c[:, j])
    return worst


@st.composite
def kmeans_inputs(draw):
    b, n, d = draw(st.integers(1, 3)), draw(st.integers(1, 40)), draw(st.integers(1, 12))
    k = draw(st.integers(1, min(n, 9)))
    dtype = draw(dtype_strategy)
    g = _gen(draw(seed_strategy))
    kind = draw(st.sampled_from(["gauss", "blobs", "duplicates"]))
    if kind == "blobs":
        centers = torch.randn(b, k, d, generator=g) * 3
        x = centers[:, torch.randint(0, k, (n,), generator=g)] + 0.3 * torch.randn(b, n, d, generator=g)
    elif kind == "duplicates":  # exact ties between points (and so between centroids)
        pool = torch.randn(b, max(1, n // 3), d, generator=g)
        x = pool[:, torch.randint(0, pool.shape[1], (n,), generator=g)]
    else:
        x = torch.randn(b, n, d, generator=g)
    x = x.to(dtype)
    pick = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(b)])
    init = torch.gather(x, 1, pick[..., None].expand(-1, -1, d))
    if draw(st.booleans()):
        init = (init.double() + 0.1 * torch.randn(b, k, d, generator=g, dtype=torch.float64)).to(dtype)
    return draw(laid_out(x)), draw(laid_out(init)), draw(st.integers(1, 6))


@pytest.mark.parametrize("impl,device", [REF, CPP, CUDA])
@given(inp=kmeans_inputs())
def test_fuzz_kmeans(impl, device, inp):
    x, init, iters = inp
    with backend("kmeans", impl, device):
        c, a = _cpu(run_twice(OPS.kmeans, _to(x, device), _to(init, device), iters))
    c_ref, a_ref = ref.kmeans(x, init, iters)
    assert c.dtype == c_ref.dtype and c.shape == init.shape
    assert a.dtype == torch.int64 and a.shape == x.shape[:2]
    assert int(a.min()) >= 0 and int(a.max()) < init.shape[1]
    if impl == "ref":
        assert torch.equal(c, c_ref) and torch.equal(a, a_ref)
        return
    if kmeans_tie_margin(x, init, iters) > KMEANS_TIE_RTOL * 10:
        assert torch.equal(a, a_ref)
        torch.testing.assert_close(c, c_ref, rtol=1e-5, atol=1e-5)
        return
    event("kmeans near-tie: tie-aware check")
    # tie-aware: the backend's assignment is a nearest-centroid assignment of its own
    # centroids (up to KMEANS_TIE_RTOL), and its inertia is no worse than the reference's
    d = _sqd(x.to(c.dtype), c)
    best = d.min(-1).values
    mine = d.gather(2, a[..., None])[..., 0]
    assert bool((mine - best <= KMEANS_TIE_RTOL * best.clamp_min(1e-30) + 1e-12).all())


# --------------------------------------------------------------------------- select / prune
def check_selection(keep_idx, prune_idx, cluster_id, b, n, p, keep_ratio, clusters):
    """The invariants of step 5's outputs."""
    kk = ref.budget(n, p, keep_ratio)
    assert keep_idx.dtype == torch.int64 and prune_idx.dtype == torch.int64 and cluster_id.dtype == torch.int32
    assert keep_idx.shape == (b, p + kk) and prune_idx.shape == (b, n - p - kk) and cluster_id.shape == (b, n)
    assert torch.equal(keep_idx[:, :p], torch.arange(p).expand(b, p))  # protected first, kept
    if keep_idx.shape[1] > 1:
        assert bool((keep_idx[:, 1:] > keep_idx[:, :-1]).all())  # strictly ascending
    if prune_idx.shape[1] > 1:
        assert bool((prune_idx[:, 1:] > prune_idx[:, :-1]).all())
    both = torch.cat([keep_idx, prune_idx], 1).sort(dim=1).values
    assert torch.equal(both, torch.arange(n).expand(b, n))  # a partition of range(N)
    assert bool((cluster_id[:, :p] == -1).all())
    rest = cluster_id[:, p:]
    assert int(rest.min()) >= 0 and int(rest.max()) < min(clusters, n - p)


# Selection outputs are exact, except that a near-tie in the k-means of step 5.1 may be
# broken differently: the C++/CUDA k-means sums a cluster's members in index order, the
# reference sums all points masked (torch's reduction order), so their centroids can
# differ in the last ulp. Where the reference's k-means trajectory has a near-tie
# (relative gap < SELECT_TIE_RTOL between a point's two nearest centroids; e.g. duplicate
# tokens make a cluster's mean equal to an initial centroid up to rounding), the check
# becomes: everything downstream of the clustering (2-means split, budget, order, indices)
# equals the reference's given the backend's own cluster assignment.
SELECT_TIE_RTOL = 1e-5


def select_tie_margin(tokens, ent, edge, keep_ratio, num_protected, alpha, entropy_mode, clusters, iters, **_):
    """The least k-means tie margin over the images, on the reference's own k-means inputs."""
    p = num_protected
    u = ref.fused_importance(ent, edge, p, alpha, entropy_mode)
    feats = tokens[:, p:].to(torch.float64)
    worst = math.inf
    for i in range(tokens.shape[0]):
        n = feats.shape[1]
        k = min(clusters, n)
        x = feats[i] / feats[i].norm(dim=-1, keepdim=True).clamp_min(1e-12)
        ranked = ref._order_desc(u[i, p:], torch.arange(n))
        init = x[ranked[[(r * n) // k for r in range(k)]]]
        worst = min(worst, kmeans_tie_margin(x[None], init[None], iters))
    return worst


def ref_select_given_assign(args, cluster_id, allocation):
    """python_ref.select with its k-means replaced by the given cluster ids."""
    p = args["num_protected"]
    rows = iter(cluster_id[:, p:].long())
    orig = ref.kmeans
    ref.kmeans = lambda x, init, iters: (None, next(rows)[None])
    try:
        return ref.select(**args, allocation=allocation)
    finally:
        ref.kmeans = orig


def assert_selection_matches(got, args, allocation="ranked"):
    """Exact equality with python_ref, tie-aware as explained above."""
    want = ref.select(**args, allocation=allocation)
    if all(torch.equal(g_, w_) for g_, w_ in zip(got, want)):
        return
    margin = select_tie_margin(**args)
    assert margin <= SELECT_TIE_RTOL, f"selection differs from python_ref without a k-means near-tie ({margin:.3g})"
    event("select: k-means near-tie, checked given the backend's clusters")
    want = ref_select_given_assign(args, got[2], allocation)
    for g_, w_, name in zip(got, want, ("keep_idx", "prune_idx", "cluster_id")):
        assert torch.equal(g_, w_), name


@st.composite
def select_inputs(draw, with_allocation=False):
    b, n, c = draw(st.integers(1, 3)), draw(st.integers(1, 40)), draw(st.integers(1, 16))
    p = draw(st.integers(0, min(n - 1, 3)))
    dtype = draw(dtype_strategy)
    g = _gen(draw(seed_strategy))
    kind = draw(st.sampled_from(["gauss", "gauss", "duplicates", "constant-ent"]))
    if kind == "duplicates":
        pool = torch.randn(b, max(1, n // 3), c, generator=g)
        tokens = pool[:, torch.randint(0, pool.shape[1], (n,), generator=g)]
    else:
        tokens = torch.randn(b, n, c, generator=g)
    nq = draw(st.integers(1, 4))
    ent = torch.rand(b, n, nq, generator=g)
    if kind == "constant-ent":  # every sigma 0: uniform weights
        ent = torch.full((b, n, nq), 0.5)
    edge = torch.rand(b, n, generator=g) if draw(st.booleans()) else None
    args = dict(
        tokens=draw(laid_out(tokens.to(dtype))),
        ent=draw(laid_out(ent.to(draw(dtype_strategy)))),
        edge=None if edge is None else draw(laid_out(edge.to(draw(dtype_strategy)))),
        keep_ratio=draw(st.one_of(st.sampled_from([1.0, 0.5, 1e-3, 0.7]), st.floats(1e-3, 1.0))),
        num_protected=p,
        alpha=draw(st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0.0, 1.0))),
        entropy_mode=draw(st.sampled_from(["low", "high"])),
        clusters=draw(st.integers(1, 10)),
        iters=draw(st.integers(1, 5)),
    )
    if with_allocation:
        args["allocation"] = draw(st.sampled_from(["ranked", "proportional"]))
    return args


def _dev_args(args, device):
    return {k: _to(v, device) for k, v in args.items()}


@pytest.mark.parametrize("impl,device", [REF, CPP, CUDA])
@given(args=select_inputs())
def test_fuzz_select(impl, device, args):
    with backend("select", impl, device):
        got = _cpu(run_twice(lambda: OPS.select(**_dev_args(args, device))))
    assert_selection_matches(got, args)
    b, n = args["tokens"].shape[:2]
    check_selection(*got, b, n, args["num_protected"], args["keep_ratio"], args["clusters"])


@pytest.mark.parametrize("impl,device", [REF, CPP, CUDA])
@given(args=select_inputs(with_allocation=True))
def test_fuzz_select_allocation(impl, device, args):
    with backend("select", impl, device):
        got = _cpu(run_twice(lambda: OPS.select(**_dev_args(args, device))))
    sel = dict(args)
    allocation = sel.pop("allocation")
    assert_selection_matches(got, sel, allocation)
    b, n = args["tokens"].shape[:2]
    check_selection(*got, b, n, args["num_protected"], args["keep_ratio"], args["clusters"])


@st.composite
def prune_inputs(draw):
    args = draw(select_inputs())
    tokens = args["tokens"]
    b, n = tokens.shape[:2]
    h = draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["mixed", "mixed", "uniform", "onehot", "sparse"]))
    attn = draw(laid_out(make_attn(draw(seed_strategy), b, h, n, draw(dtype_strategy), kind)))
    del args["ent"]
    args["attn"] = attn
    args["qs"] = draw(qs_strategy)
    return args


@pytest.mark.parametrize("impl,device", [REF, TRITON, CPP, TRITON_GPU, CUDA])
@given(args=prune_inputs())
def test_fuzz_prune(impl, device, args):
    with backend("prune", impl, device):
        kept, keep_idx, prune_idx, cluster_id = _cpu(run_twice(lambda: OPS.prune(**_dev_args(args, device))))
        ent = _cpu(OPS.tsallis_entropy(_to(args["attn"], device), args["qs"]))
    tokens = args["tokens"]
    b, n, c = tokens.shape
    p = args["num_protected"]
    sel = {k: v for k, v in args.items() if k not in ("attn", "qs")}
    if impl in ("ref", "cpp", "cuda"):  # entropies from python_ref: the whole op is exact
        assert torch.equal(ent, ref.tsallis_entropy(args["attn"], args["qs"]))
    # exact given the backend's entropies (see the module docstring on near-ties)
    assert_selection_matches((keep_idx, prune_idx, cluster_id), dict(sel, ent=ent))
    check_selection(keep_idx, prune_idx, cluster_id, b, n, p, args["keep_ratio"], args["clusters"])
    assert kept.dtype == tokens.dtype and kept.shape == (b, keep_idx.shape[1], c)
    assert torch.equal(kept, ref.gather_tokens(tokens, keep_idx))


# --------------------------------------------------------------------------- gather / scatter
def _index_dtype(draw):
    return draw(st.sampled_from([torch.int64, torch.int32]))


@st.composite
def gather_inputs(draw):
    b, n, c = draw(st.integers(1, 3)), draw(st.integers(1, 30)), draw(st.integers(1, 40))
    k = draw(st.integers(0, 2 * n))  # repeats are allowed in a gather
    g = _gen(draw(seed_strategy))
    x = torch.randn(b, n, c, generator=g).to(draw(dtype_strategy))
    idx = torch.randint(0, n, (b, k), generator=g).to(_index_dtype(draw))
    # index padding: a valid but wrong index, so reading outside the view shows as a mismatch
    return draw(laid_out(x)), draw(laid_out(idx, pad=n - 1))


@pytest.mark.parametrize("impl,device", [REF, TRITON, CPP, TRITON_GPU])
@given(inp=gather_inputs())
def test_fuzz_gather_tokens(impl, device, inp):
    x, idx = inp
    with backend("gather_tokens", impl, device):
        got = _cpu(run_twice(OPS.gather_tokens, _to(x, device), _to(idx, device)))
    want = ref.gather_tokens(x, idx) if idx.shape[1] else x[:, :0].clone()
    assert got.dtype == x.dtype and got.shape == (x.shape[0], idx.shape[1], x.shape[2]) and got.is_contiguous()
    assert torch.equal(got, want)


@st.composite
def scatter_inputs(draw):
    b, n, c = draw(st.integers(1, 3)), draw(st.integers(1, 30)), draw(st.integers(1, 40))
    k = draw(st.integers(0, n))
    dtype = draw(dtype_strategy)
    g = _gen(draw(seed_strategy))
    full = torch.randn(b, n, c, generator=g).to(dtype)
    x = torch.randn(b, k, c, generator=g).to(dtype)
    idx = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(b)]).to(_index_dtype(draw))
    return draw(laid_out(full)), draw(laid_out(x)), draw(laid_out(idx, pad=n - 1))


@pytest.mark.parametrize("impl,device", [REF, TRITON, TRITON_GPU])
@given(inp=scatter_inputs())
def test_fuzz_scatter_tokens(impl, device, inp):
    full, x, idx = inp
    with backend("scatter_tokens", impl, device):
        got = _cpu(run_twice(OPS.scatter_tokens, *(_to(t, device) for t in (full, x, idx))))
    want = ref.scatter_tokens(full, x, idx)
    assert got.dtype == full.dtype and got.shape == full.shape and got.is_contiguous()
    assert torch.equal(got, want)
    untouched = torch.ones(full.shape[:2], dtype=torch.bool)
    untouched.scatter_(1, idx.long(), False)
    assert torch.equal(got[untouched], full[untouched])


# --------------------------------------------------------------------------- reconstruct_stage
@st.composite
def reconstruct_inputs(draw):
    b, n, c = draw(st.integers(1, 3)), draw(st.integers(1, 30)), draw(st.integers(1, 24))
    p = draw(st.integers(0, min(n, 3)))
    kk = draw(st.integers(0, n - p))  # kept non-protected tokens
    clusters = draw(st.integers(1, 8))
    mode = draw(st.sampled_from(["residual", "frozen", "nearest"]))
    if mode == "nearest" and p + kk == 0 and n > 0:
        kk = 1 if n > p else 0
        p = p if kk else max(p, 1)
    g = _gen(draw(seed_strategy))
    keep_rows, prune_rows = [], []
    for _ in range(b):
        perm = torch.randperm(n - p, generator=g) + p
        keep = torch.cat([torch.arange(p), perm[:kk].sort().values])
        prune = perm[kk:].sort().values
        if draw(st.booleans()):  # any order of a partition is valid
            keep = keep[torch.randperm(keep.numel(), generator=g)]
            prune = prune[torch.randperm(prune.numel(), generator=g)]
        keep_rows.append(keep)
        prune_rows.append(prune)
    keep_idx, prune_idx = torch.stack(keep_rows), torch.stack(prune_rows)
    cid = torch.randint(0, clusters, (b, n), generator=g, dtype=torch.int32)
    cid[:, :p] = -1
    dtype = draw(dtype_strategy)
    xs_dtype = draw(st.one_of(st.just(dtype), dtype_strategy))
    x_stage = torch.randn(b, n, c, generator=g).to(xs_dtype)
    full = torch.randn(b, p + kk, c, generator=g).to(dtype)
    return (
        draw(laid_out(full)), draw(laid_out(x_stage)),
        draw(laid_out(keep_idx.to(_index_dtype(draw)), pad=n - 1, batch_broadcast=False)),
        draw(laid_out(prune_idx.to(_index_dtype(draw)), pad=n - 1, batch_broadcast=False)),
        draw(laid_out(cid.to(_index_dtype(draw)), pad=0, batch_broadcast=False)),
        clusters, mode,
    )


@pytest.mark.parametrize("impl,device", [REF, TRITON, CPP, TRITON_GPU])
@given(inp=reconstruct_inputs())
def test_fuzz_reconstruct_stage(impl, device, inp):
    full, x_stage, keep_idx, prune_idx, cid, clusters, mode = inp
    with backend("reconstruct_stage", impl, device):
        got = _cpu(run_twice(OPS.reconstruct_stage, *(_to(t, device) for t in (full, x_stage, keep_idx, prune_idx, cid)),
                             clusters, mode))
    want = pipeline.reconstruct_stage(full, x_stage, keep_idx, prune_idx, cid, clusters, mode)
    assert got.dtype == full.dtype and got.shape == x_stage.shape[:2] + full.shape[2:] and got.is_contiguous()
    # kept positions carry full exactly
    assert torch.equal(got.gather(1, keep_idx.long()[..., None].expand(-1, -1, full.shape[2])), full)
    # the cpp backend is exact: "nearest" bit for bit, the other modes are python_ref's
    if impl not in ("ref", "cpp") and full.dtype == torch.bfloat16 and x_stage.dtype == torch.float64 \
            and mode != "nearest":
        # documented in ops/gather_scatter.reconstruct_stage: fp64 -> bf16 goes through fp32
        # in the kernel (double rounding), at most 1 bf16 ulp from PyTorch's direct cast
        event("reconstruct bf16 <- fp64: 1-ulp tolerance")
        scale = sum(float(t.abs().max()) for t in (x_stage, full) if t.numel())  # K = 0 allowed
        assert float((got.double() - want.double()).abs().max()) <= 2.0**-7 * float(scale)
    else:
        assert torch.equal(got, want)
