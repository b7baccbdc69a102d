"""Numerical tests of the pure-PyTorch reference ops (python_ref/ops.py) against
independent float64 numpy formulas written here from ../shared/lvtp-spec.md, plus the
public ``torch.ops.lvtp.*`` ops, which must agree bit for bit with the reference on CPU.

The numpy formulas are deliberately *not* copies of the reference code:

* Tsallis entropy: per-order numpy fp64 sums over masked supports, maximum from the
  closed form of the spec;
* attention: fp64 einsum logits, max-shifted softmax;
* edge energy: np.pad(mode="edge") + shift-and-add Sobel (no convolution), explicit loop
  over patches;
* k-means: per-point Lloyd loop in fp64 (and scikit-learn's Lloyd for the inertia);
* gather/scatter: numpy fancy indexing.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lvtp_kernels  # noqa: F401  (registers torch.ops.lvtp.*)
from python_ref import ops as ref

DEFAULT_QS = (0.5, 1.0, 2.0, 3.0)
ALL_QS = (0.5, 1.0, 2.0, 3.0, 0.3, 1.7)
LOW_DTYPES = (torch.float16, torch.bfloat16)

LUMA = (0.299, 0.587, 0.114)
GX = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
GY = GX.T


@pytest.fixture(autouse=True)
def _ref_backend(monkeypatch):
    """torch.ops.lvtp.* must dispatch to python_ref here, so that 'op == reference' is exact
    even once compiled CPU backends exist (they are compared elsewhere, with tolerances)."""
    monkeypatch.setenv("LVTP_IMPL", "ref")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _f64(t: torch.Tensor) -> np.ndarray:
    """Exact upcast of any float tensor (bf16/fp16 included) to a float64 numpy array."""
    return t.detach().to(torch.float64).cpu().numpy()


def _assert_same(a, b):
    """Op output(s) identical to the reference output(s): dtype, shape and bits."""
    if isinstance(a, (tuple, list)):
        assert isinstance(b, (tuple, list)) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
        return
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.equal(a, b), f"op and reference differ, max |diff| {(a.double() - b.double()).abs().max()}"


def _close(actual: np.ndarray, expected: np.ndarray, atol: float, rtol: float = 0.0, what: str = ""):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
    err = np.abs(actual - expected)
    bound = atol + rtol * np.abs(expected)
    if not np.all(err <= bound):
        i = np.unravel_index(np.argmax(err - bound), err.shape)
        raise AssertionError(
            f"{what}: max |err| {err.max():.3g}; worst at {i}: got {actual[i]!r}, expected {expected[i]!r}"
        )


# =========================================================================== step 1
def np_tsallis(p: np.ndarray, qs) -> np.ndarray:
    """(B, H, N, N) float64 probabilities -> (B, N, Q): head mean of S_q / S_q_max (spec step 1)."""
    b, h, n, _ = p.shape
    out = np.zeros((b, n, len(qs)))
    pos = p > 0
    for j, q in enumerate(qs):
        q = float(q)
        if q == 1.0:
            s = -np.where(pos, p * np.log(np.where(pos, p, 1.0)), 0.0).sum(axis=-1)  # 0 ln 0 = 0
            s_max = math.log(n)
        else:
            s = (1.0 - np.where(pos, np.power(np.where(pos, p, 1.0), q), 0.0).sum(axis=-1)) / (q - 1.0)
            s_max = (1.0 - float(n) ** (1.0 - q)) / (q - 1.0)
        if n == 1:  # 0 / 0 := 0
            continue
        out[:, :, j] = (s / s_max).mean(axis=1)
    return out


def make_attn(b: int, h: int, n: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    """Softmax maps with per-row temperatures: some rows nearly uniform, some very peaked."""
    g = _gen(seed)
    logits = torch.randn(b, h, n, n, generator=g, dtype=torch.float64)
    temp = torch.exp(torch.empty(b, h, n, 1, dtype=torch.float64).uniform_(-3.0, 4.0, generator=g))
    peaked = torch.rand(b, h, n, 1, generator=g, dtype=torch.float64) < 0.1
    temp = torch.where(peaked, torch.full_like(temp, 300.0), temp)  # ~one-hot rows
    return torch.softmax(logits * temp, dim=-1).to(dtype)


TSALLIS_SIZES = [(n, h) for n in (1, 2, 50, 197, 577, 1025) for h in (1, 3, 12) if not (n == 1025 and h == 12)]


@pytest.mark.parametrize("n,h", TSALLIS_SIZES)
def test_tsallis_entropy_fp32_vs_numpy(n, h):
    b = 2 if n <= 197 else 1
    attn = make_attn(b, h, n, torch.float32, seed=n * 31 + h)
    got = ref.tsallis_entropy(attn, ALL_QS)
    assert got.dtype == torch.float32 and got.shape == (b, n, len(ALL_QS))
    _close(got.numpy(), np_tsallis(_f64(attn), ALL_QS), atol=1e-5, rtol=1e-5, what="tsallis fp32")
    assert float(got.min()) >= -1e-5 and float(got.max()) <= 1 + 1e-5
    _assert_same(torch.ops.lvtp.tsallis_entropy(attn, list(ALL_QS)), got)
    # the default orders, as a list of their own
    _assert_same(torch.ops.lvtp.tsallis_entropy(attn, list(DEFAULT_QS)), got[..., :4])


def test_tsallis_entropy_fp32_largest():
    """The heaviest combination of the grid, N=1025 with 12 heads, default orders only."""
    attn = make_attn(1, 12, 1025, torch.float32, seed=7)
    got = ref.tsallis_entropy(attn, DEFAULT_QS)
    _close(got.numpy(), np_tsallis(_f64(attn), DEFAULT_QS), atol=1e-5, rtol=1e-5, what="tsallis 1025x12")


@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("n,h", [(2, 3), (50, 12), (197, 3), (577, 1), (1025, 3)])
def test_tsallis_entropy_low_precision(dtype, n, h):
    b = 2 if n <= 197 else 1
    attn = make_attn(b, h, n, dtype, seed=n + 1000 * h)
    got = ref.tsallis_entropy(attn, ALL_QS)
    assert got.dtype == torch.float32 and got.shape == (b, n, len(ALL_QS))
    # the fp64 formula on the same (rounded) probabilities, upcast exactly
    _close(got.numpy(), np_tsallis(_f64(attn), ALL_QS), atol=1e-5, rtol=1e-5, what=f"tsallis {dtype}")
    _assert_same(torch.ops.lvtp.tsallis_entropy(attn, list(ALL_QS)), got)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("n", [2, 5, 64, 197])
def test_tsallis_entropy_one_hot_rows_are_zero(dtype, n):
    g = _gen(n)
    b, h = 2, 3
    hot = torch.randint(0, n, (b, h, n), generator=g)
    attn = torch.nn.functional.one_hot(hot, n).to(dtype)
    got = ref.tsallis_entropy(attn, ALL_QS)
    assert got.shape == (b, n, len(ALL_QS))
    assert torch.equal(got, torch.zeros_like(got)), got.abs().max()
    _assert_same(torch.ops.lvtp.tsallis_entropy(attn, list(ALL_QS)), got)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("n", [2, 3, 8, 50, 197])
def test_tsallis_entropy_uniform_rows_are_one(dtype, n):
    attn = torch.full((1, 2, n, n), 1.0 / n, dtype=dtype)
    got = ref.tsallis_entropy(attn, ALL_QS)
    # on the rounded probabilities, the fp64 formula ...
    _close(got.numpy(), np_tsallis(_f64(attn), ALL_QS), atol=1e-5, rtol=1e-5, what="uniform vs formula")
    # ... and, where 1/n is exact (n a power of two) or rounded only in fp32/fp64, 1
    if dtype in (torch.float32, torch.float64) or (n & (n - 1)) == 0:
        _close(got.numpy(), np.ones((1, n, len(ALL_QS))), atol=1e-5, what="uniform -> 1")
    _assert_same(torch.ops.lvtp.tsallis_entropy(attn, list(ALL_QS)), got)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_tsallis_entropy_single_token_is_zero(dtype):
    attn = torch.ones(2, 4, 1, 1, dtype=dtype)
    got = ref.tsallis_entropy(attn, ALL_QS)
    assert got.shape == (2, 1, len(ALL_QS)) and got.dtype == torch.float32
    assert not torch.isnan(got).any()
    assert torch.equal(got, torch.zeros_like(got))
    _assert_same(torch.ops.lvtp.tsallis_entropy(attn, list(ALL_QS)), got)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_tsallis_entropy_exact_zeros(dtype):
    """Rows with exact zeros: 0^q = 0 for q = 0.5 and 0.3, 0 ln 0 = 0 for Shannon."""
    n = 8
    attn = torch.zeros(1, 2, n, n, dtype=torch.float64)
    for i in range(n):  # row i spreads its mass uniformly over its first i+1 columns, rest exact zeros
        attn[0, 0, i, : i + 1] = 1.0 / (i + 1)
        attn[0, 1, i, i:] = 1.0 / (n - i)
    attn = attn.to(dtype)
    qs = (0.3, 0.5, 1.0, 2.0)
    got = ref.tsallis_entropy(attn, qs)
    assert not torch.isnan(got).any()
    _close(got.numpy(), np_tsallis(_f64(attn), qs), atol=1e-5, rtol=1e-5, what="exact zeros")
    if dtype == torch.float32:
        # closed form: a row uniform on m of n columns has S_q = S_q_max(m)
        def s_max(m, q):
            return math.log(m) if q == 1.0 else (1.0 - m ** (1.0 - q)) / (q - 1.0)

        want = np.array(
            [[(s_max(i + 1, q) + s_max(n - i, q)) / (2 * s_max(n, q)) for q in qs] for i in range(n)]
        )[None]
        _close(got.numpy(), want, atol=1e-5, rtol=1e-5, what="closed form")
    _assert_same(torch.ops.lvtp.tsallis_entropy(attn, list(qs)), got)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_tsallis_entropy_non_contiguous(dtype):
    b, h, n = 2, 3, 50
    attn = make_attn(b, h, n, dtype, seed=5)
    want = ref.tsallis_entropy(attn, ALL_QS)
    want_np = np_tsallis(_f64(attn), ALL_QS)
    views = {
        # same values, heads outermost in memory
        "transposed twice": attn.transpose(1, 2).contiguous().transpose(1, 2),
        # last dim strided: stored column-major
        "column-major": attn.transpose(-1, -2).contiguous().transpose(-1, -2),
        # every other batch item of a bigger tensor
        "batch slice": torch.stack([attn[0], make_attn(1, h, n, dtype, 6)[0], attn[1]])[::2],
        # stride-2 rows and columns inside a bigger buffer
        "strided buffer": torch.zeros(b, h, 2 * n, 2 * n, dtype=dtype).index_put_(
            (torch.arange(b)[:, None, None, None], torch.arange(h)[None, :, None, None],
             (2 * torch.arange(n))[None, None, :, None], (2 * torch.arange(n))[None, None, None, :]),
            attn,
        )[:, :, ::2, ::2],
    }
    for name, view in views.items():
        assert not view.is_contiguous(), name
        assert torch.equal(view, attn), name
        got = ref.tsallis_entropy(view, ALL_QS)
        _close(got.numpy(), want_np, atol=1e-5, rtol=1e-5, what=f"non-contiguous {name}")
        _close(got.numpy(), want.numpy(), atol=1e-6, rtol=1e-6, what=f"non-contiguous {name} vs contiguous")
        _assert_same(torch.ops.lvtp.tsallis_entropy(view, list(ALL_QS)), got)


# =========================================================================== attention_entropy
def np_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float):
    logits = np.einsum("bhnd,bhmd->bhnm", q, k) * scale
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    p = e / e.sum(axis=-1, keepdims=True)
    return np.einsum("bhnm,bhmd->bhnd", p, v), p


ATT_CASES = [
    # (B, H, N, D, Dv)
    (1, 1, 1, 5, 5),
    (2, 3, 7, 5, 17),
    (2, 3, 50, 33, 33),
    (1, 12, 197, 64, 64),
    (1, 2, 197, 33, 8),
    (2, 1, 65, 64, 1),
]


@pytest.mark.parametrize("b,h,n,d,dv", ATT_CASES)
def test_attention_entropy_fp32_vs_numpy(b, h, n, d, dv):
    g = _gen(b * 1000 + n * 10 + d)
    q = torch.randn(b, h, n, d, generator=g)
    k = torch.randn(b, h, n, d, generator=g) * 2.0  # sharper maps than the default init
    v = torch.randn(b, h, n, dv, generator=g)
    scale = d ** -0.5
    out, ent = ref.attention_entropy(q, k, v, ALL_QS, scale)
    assert out.shape == (b, h, n, dv) and out.dtype == torch.float32
    assert ent.shape == (b, n, len(ALL_QS)) and ent.dtype == torch.float32
    want_out, p = np_attention(_f64(q), _f64(k), _f64(v), scale)
    _close(out.numpy(), want_out, atol=1e-5, rtol=1e-5, what="attention out")
    _close(ent.numpy(), np_tsallis(p, ALL_QS), atol=1e-5, rtol=1e-5, what="attention ent")
    _assert_same(torch.ops.lvtp.attention_entropy(q, k, v, list(ALL_QS), scale), (out, ent))


@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("b,h,n,d,dv", [(2, 3, 50, 33, 33), (1, 2, 197, 64, 5)])
def test_attention_entropy_low_precision(dtype, b, h, n, d, dv):
    g = _gen(n + d)
    q = torch.randn(b, h, n, d, generator=g).to(dtype)
    k = (torch.randn(b, h, n, d, generator=g) * 2.0).to(dtype)
    v = torch.randn(b, h, n, dv, generator=g).to(dtype)
    scale = d ** -0.5
    out, ent = ref.attention_entropy(q, k, v, ALL_QS, scale)
    assert out.dtype == dtype and out.shape == (b, h, n, dv)
    assert ent.dtype == torch.float32
    want_out, p = np_attention(_f64(q), _f64(k), _f64(v), scale)
    # out is rounded once to the low-precision dtype at the end (fp32 accumulation before)
    rt = 2.0 ** -10 if dtype == torch.float16 else 2.0 ** -7
    _close(out.to(torch.float64).numpy(), want_out, atol=1e-4, rtol=rt, what=f"out {dtype}")
    _close(ent.numpy(), np_tsallis(p, ALL_QS), atol=1e-5, rtol=1e-5, what=f"ent {dtype}")
    _assert_same(torch.ops.lvtp.attention_entropy(q, k, v, list(ALL_QS), scale), (out, ent))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_attention_entropy_large_logits(dtype):
    """|scale * q.k| up to ~2.5e3: no overflow, no NaN. Integer q, k and a power-of-two
    scale make the logits exact in fp32, so the fp64 reference is an exact target."""
    g = _gen(11)
    b, h, n, d, dv = 2, 3, 40, 5, 6
    q = torch.randint(-8, 9, (b, h, n, d), generator=g).to(dtype)
    k = torch.randint(-8, 9, (b, h, n, d), generator=g).to(dtype)
    v = torch.randn(b, h, n, dv, generator=g).to(dtype)
    scale = 8.0
    assert float((torch.einsum("bhnd,bhmd->bhnm", q.double(), k.double()) * scale).abs().max()) > 1e3
    out, ent = ref.attention_entropy(q, k, v, ALL_QS, scale)
    assert torch.isfinite(out).all() and torch.isfinite(ent).all()
    want_out, p = np_attention(_f64(q), _f64(k), _f64(v), scale)
    rt = {torch.float32: 1e-5, torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}[dtype]
    _close(out.to(torch.float64).numpy(), want_out, atol=1e-5, rtol=rt, what="large-logit out")
    _close(ent.numpy(), np_tsallis(p, ALL_QS), atol=1e-5, rtol=1e-5, what="large-logit ent")
    _assert_same(torch.ops.lvtp.attention_entropy(q, k, v, list(ALL_QS), scale), (out, ent))


def test_attention_entropy_matches_tsallis_of_its_map():
    """ent == tsallis_entropy of the softmax map, and the map from non-contiguous q, k, v."""
    g = _gen(3)
    b, h, n, d = 2, 4, 30, 33
    q = torch.randn(b, n, h, d, generator=g).transpose(1, 2)  # (B, H, N, D) view, non-contiguous
    k = torch.randn(b, h, d, n, generator=g).transpose(-1, -2)
    v = torch.randn(b, h, n, 2 * d, generator=g)[..., ::2]
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    out, ent = ref.attention_entropy(q, k, v, DEFAULT_QS, 0.25)
    want_out, p = np_attention(_f64(q), _f64(k), _f64(v), 0.25)
    _close(out.numpy(), want_out, atol=1e-5, rtol=1e-5, what="non-contiguous out")
    _close(ent.numpy(), np_tsallis(p, DEFAULT_QS), atol=1e-5, rtol=1e-5, what="non-contiguous ent")
    via_map = ref.tsallis_entropy(torch.from_numpy(p), DEFAULT_QS)
    _close(ent.numpy(), via_map.numpy(), atol=1e-5, rtol=1e-5, what="ent vs tsallis(map)")
    _assert_same(torch.ops.lvtp.attention_entropy(q, k, v, list(DEFAULT_QS), 0.25), (out, ent))


# =========================================================================== step 3
def np_edge_energy(img: np.ndarray, patch: int) -> np.ndarray:
    """(B, 3, H, W) float64 -> (B, h*w): replicate pad, shift-and-add Sobel, loop over patches."""
    b, _, height, width = img.shape
    y = LUMA[0] * img[:, 0] + LUMA[1] * img[:, 1] + LUMA[2] * img[:, 2]
    yp = np.pad(y, ((0, 0), (1, 1), (1, 1)), mode="edge")
    gx = np.zeros_like(y)
    gy = np.zeros_like(y)
    for dy in range(3):  # cross-correlation: out[r, c] = sum K[dy, dx] * Y[r + dy - 1, c + dx - 1]
        for dx in range(3):
            win = yp[:, dy : dy + height, dx : dx + width]
            gx += GX[dy, dx] * win
            gy += GY[dy, dx] * win
    mag = np.sqrt(gx * gx + gy * gy)
    h, w = height // patch, width // patch
    e = np.zeros((b, h * w))
    for i in range(h):
        for j in range(w):
            e[:, i * w + j] = mag[:, i * patch : (i + 1) * patch, j * patch : (j + 1) * patch].mean(axis=(1, 2))
    return e / (e.max(axis=1, keepdims=True) + 1e-6)


EDGE_CASES = [
    # (B, H, W, patch)
    (2, 37, 50, 16),
    (1, 16, 16, 16),
    (2, 64, 48, 8),
    (1, 224, 224, 16),
    (3, 17, 9, 4),
    (1, 5, 7, 1),
    (1, 3, 3, 3),
]


def _image(b, height, width, seed, dtype=torch.float32):
    g = _gen(seed)
    # smooth-ish background plus random blocks, so patches have very different energies
    img = torch.rand(b, 3, height, width, generator=g) * 0.1
    img += (torch.rand(b, 3, (height + 3) // 4, (width + 3) // 4, generator=g) > 0.6).float().repeat_interleave(
        4, 2
    ).repeat_interleave(4, 3)[:, :, :height, :width]
    return img.to(dtype)


@pytest.mark.parametrize("b,height,width,patch", EDGE_CASES)
def test_patch_edge_energy_vs_numpy(b, height, width, patch):
    img = _image(b, height, width, seed=height * width + patch)
    got = ref.patch_edge_energy(img, patch)
    h, w = height // patch, width // patch
    assert got.shape == (b, h * w) and got.dtype == torch.float32
    _close(got.numpy(), np_edge_energy(_f64(img), patch), atol=1e-5, rtol=1e-5, what="edge energy")
    _assert_same(torch.ops.lvtp.patch_edge_energy(img, patch), got)


def test_patch_edge_energy_ignores_pixels_past_the_grid():
    """Changing pixels outside the h*patch x w*patch grid (beyond its 1-pixel Sobel halo) changes nothing."""
    img = _image(2, 37, 50, seed=1)
    other = img.clone()
    other[:, :, 33:, :] = torch.rand(2, 3, 4, 50, generator=_gen(2))  # rows 33.. (grid ends at 32)
    other[:, :, :, 49:] = 5.0  # column 49 (grid ends at 48)
    a = ref.patch_edge_energy(img, 16)
    c = ref.patch_edge_energy(other, 16)
    _close(c.numpy(), np_edge_energy(_f64(other), 16), atol=1e-5, rtol=1e-5, what="modified border")
    assert torch.equal(a, c)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_patch_edge_energy_dtypes(dtype):
    img = _image(2, 37, 50, seed=9, dtype=dtype)
    got = ref.patch_edge_energy(img, 8)
    assert got.dtype == torch.float32 and got.shape == (2, 4 * 6)
    _close(got.numpy(), np_edge_energy(_f64(img), 8), atol=1e-5, rtol=1e-5, what=f"edge {dtype}")
    _assert_same(torch.ops.lvtp.patch_edge_energy(img, 8), got)


def test_patch_edge_energy_non_contiguous():
    img = _image(2, 40, 48, seed=4)
    view = img.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels-last storage
    sliced = torch.cat([img, img], dim=3)[..., ::2]  # not the same values: only layout matters here
    assert not view.is_contiguous() and not sliced.is_contiguous()
    want = ref.patch_edge_energy(img, 8)
    _close(ref.patch_edge_energy(view, 8).numpy(), want.numpy(), atol=1e-6, what="channels-last")
    _close(
        ref.patch_edge_energy(sliced, 8).numpy(),
        np_edge_energy(_f64(sliced), 8),
        atol=1e-5,
        rtol=1e-5,
        what="strided",
    )
    _assert_same(torch.ops.lvtp.patch_edge_energy(view, 8), ref.patch_edge_energy(view, 8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
def test_patch_edge_energy_constant_image_is_zero(dtype, value):
    img = torch.full((2, 3, 37, 50), value, dtype=dtype)
    got = ref.patch_edge_energy(img, 16)
    assert got.shape == (2, 2 * 3)
    assert torch.equal(got, torch.zeros(2, 6))
    _assert_same(torch.ops.lvtp.patch_edge_energy(img, 16), got)


def test_patch_edge_energy_vertical_step():
    """Hand case: a vertical luminance step 0 -> 1 between columns 7 and 8 of a 16x16 image,
    patch 8. Gx = 4 on columns 7 and 8 only (Gy = 0), so each of the four 8x8 patches holds
    one column of 4 in 8: e = 0.5 everywhere, normalised to 0.5 / (0.5 + 1e-6)."""
    img = torch.zeros(1, 3, 16, 16)
    img[..., 8:] = 1.0
    got = ref.patch_edge_energy(img, 8)
    want = np.full((1, 4), 0.5 / (0.5 + 1e-6))
    _close(got.numpy(), want, atol=1e-6, what="vertical step")
    # a horizontal step between rows 3 and 4: Gy = 4 on rows 3 and 4, both in the top patch
    # row, so the top patches have e = 2 * 4 / 8 = 1 and the bottom ones 0
    img = torch.zeros(1, 3, 16, 16)
    img[:, :, 4:, :] = 1.0
    got = ref.patch_edge_energy(img, 8)
    _close(got.numpy(), np.array([[1.0, 1.0, 0.0, 0.0]]) / (1.0 + 1e-6), atol=1e-6, what="horizontal")


# =========================================================================== step 5.1
def np_lloyd(x: np.ndarray, init: np.ndarray, iters: int):
    """One image, float64: returns centroids, final assignment, near-tie mask of the final
    assignment, whether any intermediate assignment had a near tie, whether a cluster emptied."""
    n = x.shape[0]
    c = init.copy()
    k = c.shape[0]

    def assign_step(cent):
        a = np.empty(n, dtype=np.int64)
        tie = np.zeros(n, dtype=bool)
        for i in range(n):
            d = ((cent - x[i]) ** 2).sum(axis=1)
            best = int(np.argmin(d))  # first minimum: lower index
            a[i] = best
            if k > 1:
                two = np.sort(d)[:2]
                tie[i] = two[1] - two[0] <= 1e-6 * max(two[1], 1e-30)
        return a, tie

    any_tie = False
    emptied = False
    for _ in range(iters):
        a, tie = assign_step(c)
        any_tie |= bool(tie.any())
        for j in range(k):
            members = x[a == j]
            if len(members):
                c[j] = members.sum(axis=0) / len(members)
            else:
                emptied = True  # keeps its centroid
    a, tie = assign_step(c)
    return c, a, tie, any_tie, emptied


def _kmeans_data(b, n, d, k, seed, dtype, init_mode):
    g = _gen(seed)
    centers = torch.randn(b, k, d, generator=g, dtype=torch.float64) * 2.0
    lab = torch.randint(0, k, (b, n), generator=g)
    x = torch.gather(centers, 1, lab[..., None].expand(b, n, d)) + torch.randn(b, n, d, generator=g, dtype=torch.float64)
    if init_mode == "points":  # like the spec: k distinct tokens
        init = torch.stack([x[i, torch.randperm(n, generator=g)[:k]] for i in range(b)])
    elif init_mode == "normalized":  # L2-normalised features, as select() runs it
        x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        init = torch.stack([x[i, torch.randperm(n, generator=g)[:k]] for i in range(b)])
    else:  # random centroids, some far away: exercises empty clusters
        init = torch.randn(b, k, d, generator=g, dtype=torch.float64) * 3.0
    return x.to(dtype), init.to(dtype)


KMEANS_CASES = [
    # (B, n, d, k, iters, dtype, init)
    (2, 200, 16, 8, 10, torch.float32, "points"),
    (1, 196, 64, 8, 10, torch.float32, "normalized"),
    (3, 50, 3, 5, 1, torch.float32, "points"),
    (2, 64, 7, 1, 5, torch.float32, "points"),
    (1, 12, 4, 12, 3, torch.float32, "points"),
    (2, 100, 5, 6, 8, torch.float32, "random"),
    (2, 120, 9, 4, 6, torch.float16, "points"),
    (2, 120, 9, 4, 6, torch.bfloat16, "normalized"),
    (2, 150, 6, 7, 10, torch.float64, "random"),
]


@pytest.mark.parametrize("b,n,d,k,iters,dtype,init_mode", KMEANS_CASES)
def test_kmeans_vs_numpy_lloyd(b, n, d, k, iters, dtype, init_mode):
    x, init = _kmeans_data(b, n, d, k, seed=n * 7 + k + iters, dtype=dtype, init_mode=init_mode)
    cent, assign = ref.kmeans(x, init, iters)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert cent.shape == (b, k, d) and cent.dtype == acc
    assert assign.shape == (b, n) and assign.dtype == torch.int64
    for i in range(b):
        c_np, a_np, tie, any_tie, _ = np_lloyd(_f64(x[i]), _f64(init[i]), iters)
        assert not any_tie, "test data has a near tie during the iterations; pick another seed"
        a = assign[i].numpy()
        assert np.array_equal(a[~tie], a_np[~tie]), f"item {i}: {(a != a_np).sum()} assignments differ"
        assert set(np.unique(a)) <= set(range(k))
        _close(cent[i].numpy(), c_np, atol=1e-5, rtol=1e-5, what=f"centroids item {i}")
    _assert_same(torch.ops.lvtp.kmeans(x, init, iters), (cent, assign))


@pytest.mark.parametrize("b,n,d,k,iters,dtype,init_mode", [c for c in KMEANS_CASES if c[6] != "random"])
def test_kmeans_vs_sklearn_inertia(b, n, d, k, iters, dtype, init_mode):
    from sklearn.cluster import KMeans

    x, init = _kmeans_data(b, n, d, k, seed=n * 7 + k + iters, dtype=dtype, init_mode=init_mode)
    cent, _ = ref.kmeans(x, init, iters)
    for i in range(b):
        xi, ci = _f64(x[i]), _f64(init[i])
        # scikit-learn relocates emptied clusters (the spec keeps them): only comparable without
        _, _, _, _, emptied = np_lloyd(xi, ci, iters)
        assert not emptied, "test data empties a cluster; scikit-learn would relocate it"
        km = KMeans(n_clusters=k, init=ci, n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd").fit(xi)
        c = _f64(cent[i])
        d2 = ((xi[:, None, :] - c[None, :, :]) ** 2).sum(-1)
        ours = d2.min(axis=1).sum()
        assert abs(ours - km.inertia_) <= 1e-4 * max(km.inertia_, 1e-12), (ours, km.inertia_)


def test_kmeans_unattractive_centroid_keeps_its_value():
    g = _gen(21)
    x = torch.randn(2, 40, 3, generator=g)
    init = torch.stack([x[0, :3], x[1, :3]]).clone()
    init[:, 1] = torch.tensor([100.0, -100.0, 50.0])  # attracts nobody, ever
    cent, assign = ref.kmeans(x, init, 5)
    assert torch.equal(cent[:, 1], init[:, 1])
    assert not (assign == 1).any()
    for i in range(2):
        c_np, a_np, tie, _, emptied = np_lloyd(_f64(x[i]), _f64(init[i]), 5)
        assert emptied
        assert np.array_equal(assign[i].numpy()[~tie], a_np[~tie])
        _close(cent[i].numpy(), c_np, atol=1e-5, what="centroids")
    _assert_same(torch.ops.lvtp.kmeans(x, init, 5), (cent, assign))


@pytest.mark.parametrize("iters", [1, 4])
def test_kmeans_identical_centroids_go_to_lower_index(iters):
    g = _gen(22)
    # Symmetric integer points and two identical centroids at their mean (0): every point
    # ties at every assignment, all go to cluster 0, whose mean stays exactly 0; cluster 1 is
    # always empty and keeps its value.
    half = torch.randint(-5, 6, (1, 15, 4), generator=g).float()
    x = torch.cat([half, -half], dim=1)
    init = torch.zeros(1, 2, 4)
    cent, assign = ref.kmeans(x, init, iters)
    assert torch.equal(assign, torch.zeros_like(assign))
    assert torch.equal(cent, torch.zeros(1, 2, 4))
    _assert_same(torch.ops.lvtp.kmeans(x, init, iters), (cent, assign))

    # Random points, k = 2, both centroids equal to one point: the first assignment sends every
    # point to cluster 0, so after one update c0 is the mean of all points and c1 is unchanged.
    x = torch.randn(1, 30, 4, generator=g)
    init = torch.stack([x[0, 5], x[0, 5]])[None].clone()
    cent, assign = ref.kmeans(x, init, 1)
    _close(cent[0, 0].numpy(), _f64(x[0]).mean(axis=0), atol=1e-6, what="centroid 0 = mean of all")
    assert torch.equal(cent[0, 1], init[0, 1])
    c_np, a_np, tie, _, _ = np_lloyd(_f64(x[0]), _f64(init[0]), 1)
    assert np.array_equal(assign[0].numpy()[~tie], a_np[~tie])

    # k = 4 with clusters 1 and 2 identical, far from 0 and 3: the pair's points all go to 1,
    # never to 2, at the first assignment (visible in the centroids after one update)
    y = torch.cat([torch.randn(10, 2, generator=g), torch.randn(10, 2, generator=g) + 20.0])[None]
    init = torch.tensor([[[0.0, 0.0], [20.0, 20.0], [20.0, 20.0], [-50.0, -50.0]]])
    cent, assign = ref.kmeans(y, init, 1)
    _close(cent[0, 0].numpy(), _f64(y[0, :10]).mean(axis=0), atol=1e-5, what="centroid 0")
    _close(cent[0, 1].numpy(), _f64(y[0, 10:]).mean(axis=0), atol=1e-5, what="centroid 1")
    assert torch.equal(cent[0, 2], init[0, 2]) and torch.equal(cent[0, 3], init[0, 3])
    assert torch.equal(assign[0, :10], torch.zeros(10, dtype=torch.int64))
    c_np, a_np, tie, _, _ = np_lloyd(_f64(y[0]), _f64(init[0]), iters)
    cent, assign = ref.kmeans(y, init, iters)
    assert np.array_equal(assign[0].numpy()[~tie], a_np[~tie])
    _close(cent[0].numpy(), c_np, atol=1e-5, what="centroids after iters")
    _assert_same(torch.ops.lvtp.kmeans(y, init, iters), (cent, assign))


def test_kmeans_does_not_modify_init_and_accepts_non_contiguous():
    x, init = _kmeans_data(2, 80, 6, 5, seed=3, dtype=torch.float32, init_mode="points")
    x_nc = x.transpose(1, 2).contiguous().transpose(1, 2)
    init_nc = init.transpose(1, 2).contiguous().transpose(1, 2)
    assert not x_nc.is_contiguous() and not init_nc.is_contiguous()
    init_before = init_nc.clone()
    cent, assign = ref.kmeans(x_nc, init_nc, 6)
    assert torch.equal(init_nc, init_before)
    for i in range(2):
        c_np, a_np, tie, _, _ = np_lloyd(_f64(x[i]), _f64(init[i]), 6)
        assert np.array_equal(assign[i].numpy()[~tie], a_np[~tie])
        _close(cent[i].numpy(), c_np, atol=1e-5, what="non-contiguous centroids")
    _assert_same(torch.ops.lvtp.kmeans(x_nc, init_nc, 6), (cent, assign))
    assert torch.equal(init_nc, init_before)


# =========================================================================== gather / scatter
def _np_view(t: torch.Tensor) -> np.ndarray:
    """Exact numpy copy (bf16 goes through fp32, which is exact)."""
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


X_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("dtype", X_DTYPES)
@pytest.mark.parametrize("b,n,c,k", [(2, 197, 8, 137), (1, 5, 3, 5), (3, 10, 1, 1), (2, 6, 4, 12), (2, 9, 4, 0)])
def test_gather_tokens_vs_numpy(b, n, c, k, dtype, idx_dtype):
    g = _gen(b + n + c + k)
    x = torch.randn(b, c, n, generator=g).to(dtype).transpose(1, 2)  # (B, N, C), non-contiguous
    assert not x.is_contiguous() or c == 1
    idx = torch.randint(0, n, (b, k), generator=g, dtype=torch.int64).to(idx_dtype)  # duplicates allowed
    got = ref.gather_tokens(x, idx)
    assert got.shape == (b, k, c) and got.dtype == dtype and got.is_contiguous()
    xn, ixn = _np_view(x), idx.numpy().astype(np.int64)
    want = xn[np.arange(b)[:, None], ixn]
    assert np.array_equal(_np_view(got), want)
    op = torch.ops.lvtp.gather_tokens(x, idx)
    _assert_same(op, got)
    assert op.is_contiguous()


def test_gather_tokens_non_contiguous_index():
    g = _gen(77)
    x = torch.randn(2, 30, 4, generator=g)[:, ::2]  # (2, 15, 4) strided along N
    idx = torch.randint(0, 15, (2, 20), generator=g, dtype=torch.int32)[:, ::2]
    assert not idx.is_contiguous() and not x.is_contiguous()
    got = ref.gather_tokens(x, idx)
    want = x.numpy()[np.arange(2)[:, None], idx.numpy()]
    assert got.is_contiguous() and np.array_equal(got.numpy(), want)
    _assert_same(torch.ops.lvtp.gather_tokens(x, idx), got)


@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("dtype", X_DTYPES)
@pytest.mark.parametrize("b,n,c,k", [(2, 197, 8, 60), (1, 5, 3, 5), (3, 10, 1, 1), (2, 9, 4, 0)])
def test_scatter_tokens_vs_numpy(b, n, c, k, dtype, idx_dtype):
    g = _gen(b * n + c + k)
    full = torch.randn(b, c, n, generator=g).to(dtype).transpose(1, 2)  # non-contiguous
    x = torch.randn(b, k, 2 * c, generator=g).to(dtype)[..., ::2]  # non-contiguous
    idx = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(b)]).to(idx_dtype)
    full_before, x_before, idx_before = full.clone(), x.clone(), idx.clone()
    got = ref.scatter_tokens(full, x, idx)
    assert got.shape == (b, n, c) and got.dtype == dtype and got.is_contiguous()
    # out-of-place: inputs unchanged, output has its own storage
    assert torch.equal(full, full_before) and torch.equal(x, x_before) and torch.equal(idx, idx_before)
    assert got.untyped_storage().data_ptr() != full.untyped_storage().data_ptr()
    want = _np_view(full).copy()
    want[np.arange(b)[:, None], idx.numpy().astype(np.int64)] = _np_view(x)
    assert np.array_equal(_np_view(got), want)
    op = torch.ops.lvtp.scatter_tokens(full, x, idx)
    _assert_same(op, got)
    assert op.is_contiguous()
    assert torch.equal(full, full_before) and torch.equal(x, x_before)


def test_scatter_then_gather_roundtrip():
    g = _gen(99)
    b, n, c = 2, 50, 6
    full = torch.randn(b, n, c, generator=g)
    perm = torch.stack([torch.randperm(n, generator=g) for _ in range(b)])
    keep, drop = perm[:, :20].sort(1).values, perm[:, 20:].sort(1).values
    kept = ref.gather_tokens(full, keep)
    rest = ref.gather_tokens(full, drop)
    rebuilt = ref.scatter_tokens(torch.zeros_like(full), kept, keep)
    rebuilt = ref.scatter_tokens(rebuilt, rest, drop)
    assert torch.equal(rebuilt, full)
    _assert_same(
        torch.ops.lvtp.scatter_tokens(torch.ops.lvtp.scatter_tokens(torch.zeros_like(full), kept, keep), rest, drop),
        rebuilt,
    )


@pytest.mark.parametrize("q", [1 + 1e-6, 1 - 1e-6, 1 + 1e-4, 1 - 1e-4, 0.76, 1.24, 0.74, 1.26])
def test_tsallis_entropy_orders_near_one_keep_their_precision(q):
    """(1 - sum p^q) / (q - 1) cancels catastrophically near q = 1 in fp32; the reference
    must still match the literal formula evaluated in fp64 on the same fp32 probabilities."""
    g = torch.Generator().manual_seed(11)
    attn = torch.softmax(torch.randn(2, 3, 197, 197, generator=g) * 3, -1)
    p = attn.double().numpy()
    n = p.shape[-1]
    s = (1.0 - (p**q).sum(-1)) / (q - 1.0)
    s_max = (1.0 - n ** (1.0 - q)) / (q - 1.0)
    want = (s / s_max).mean(1)
    got = ref.tsallis_entropy(attn, [q])[..., 0].double().numpy()
    assert np.abs(got - want).max() < 1e-5


def test_patch_edge_energy_huge_finite_image_does_not_overflow():
    img = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 1e20
    got = ref.patch_edge_energy(img, 4)
    want = ref.patch_edge_energy(img.double(), 4)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
