"""Triton ``patch_edge_energy`` (lvtp_kernels/ops/edge_triton.py) against python_ref.

Runs the real kernels on CPU tensors through Triton's interpreter (TRITON_INTERPRET=1,
set by conftest.py), called through ``torch.ops.lvtp`` with ``LVTP_IMPL=triton``.
fp32/fp64 images: within 1e-5 absolute + relative of python_ref. fp16/bf16 images: the
flash-attention rule (kernel error against the fp64 reference of the same input at most
twice the error of the same math run in the low precision, plus 1e-6).
"""

from __future__ import annotations


import pytest
import torch

import lvtp_kernels  # noqa: F401  (defines torch.ops.lvtp.*)
from python_ref import ops as ref
from lvtp_kernels.ops._common import interpreting  # noqa: E402
from triton_compile import compile_for_hopper  # noqa: E402
from ext_marks import use_triton  # noqa: E402

# CPU tensors through the Triton interpreter; on a GPU machine tests/test_gpu_kernels.py runs
# the compiled kernels against the reference instead.
pytestmark = pytest.mark.skipif(not interpreting(), reason="needs TRITON_INTERPRET=1 (CPU interpreter tests)")

OP = "patch_edge_energy"
LOW = (torch.float16, torch.bfloat16)


_triton_backend = pytest.fixture(autouse=True, name="_triton_backend")(lambda monkeypatch: use_triton(monkeypatch, OP))


def _op(image, patch):
    return torch.ops.lvtp.patch_edge_energy(image, patch)


def make_image(gen, b, h, w, dtype=torch.float32):
    """Smooth regions plus sharp edges and noise, values in [0, 1]."""
    yy = torch.linspace(0, 1, h, dtype=torch.float64)[:, None]
    xx = torch.linspace(0, 1, w, dtype=torch.float64)[None, :]
    img = torch.rand(b, 3, h, w, generator=gen, dtype=torch.float64) * 0.2
    img += 0.5 * ((xx + yy) > 0.8)  # a diagonal edge
    img += 0.3 * torch.sin(12 * xx) * torch.cos(7 * yy)
    return img.clamp(0, 1).to(dtype)


def assert_close(got, want, tol=1e-5):
    assert got.dtype == torch.float32 and got.shape == want.shape and got.is_contiguous()
    err = (got.double() - want.double()).abs()
    assert bool((err <= tol + tol * want.double().abs()).all()), f"max |err| {err.max().item():.3g}"


def lowp_edge(image, patch):
    """The reference's math with every operation in the image's low-precision dtype
    (shift-and-add Sobel instead of conv2d, which CPU half precision may lack)."""
    img = image
    b, _, height, width = img.shape
    y = ref.LUMA[0] * img[:, 0] + ref.LUMA[1] * img[:, 1] + ref.LUMA[2] * img[:, 2]
    y = torch.nn.functional.pad(y[:, None].float(), (1, 1, 1, 1), mode="replicate")[:, 0].to(img.dtype)
    sh = lambda dr, dc: y[:, dr : dr + height, dc : dc + width]  # noqa: E731
    gx = (sh(0, 2) - sh(0, 0)) + 2 * (sh(1, 2) - sh(1, 0)) + (sh(2, 2) - sh(2, 0))
    gy = (sh(2, 0) + 2 * sh(2, 1) + sh(2, 2)) - (sh(0, 0) + 2 * sh(0, 1) + sh(0, 2))
    mag = torch.hypot(gx, gy)
    h, w = height // patch, width // patch
    mag = mag[:, : h * patch, : w * patch]
    e = mag.reshape(b, h, patch, w, patch).mean(dim=(2, 4)).reshape(b, h * w)
    return e / (e.amax(dim=1, keepdim=True) + 1e-6)


def assert_flash_rule(got, image, patch):
    exact = ref.patch_edge_energy(image.double(), patch).double()
    err_kernel = (got.double() - exact).abs().max().item()
    err_torch = (lowp_edge(image, patch).double() - exact).abs().max().item()
    assert err_kernel <= 2.0 * err_torch + 1e-6, (err_kernel, err_torch)


SHAPES = [  # (B, H, W, patch)
    (2, 32, 48, 8),  # exact grid
    (1, 37, 53, 7),  # pixels past the grid on both sides, odd patch
    (2, 16, 16, 16),  # a single patch
    (1, 9, 11, 1),  # patch 1: energy per pixel
    (1, 30, 45, 14),  # ViT/14-like, non power-of-two patch, tail columns
    (3, 17, 70, 4),  # wide: several column blocks on a GPU
]


@pytest.mark.parametrize("b,h,w,patch", SHAPES)
def test_fp32_matches_reference(gen, b, h, w, patch):
    image = make_image(gen, b, h, w)
    got = _op(image, patch)
    assert got.shape == (b, (h // patch) * (w // patch))
    assert_close(got, ref.patch_edge_energy(image, patch))


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("b,h,w,patch", [(2, 32, 48, 8), (1, 37, 53, 7)])
def test_low_precision_flash_rule(gen, dtype, b, h, w, patch):
    image = make_image(gen, b, h, w, dtype)
    assert_flash_rule(_op(image, patch), image, patch)


def test_fp64_image(gen):
    image = make_image(gen, 2, 24, 40, torch.float64)
    assert_close(_op(image, 8), ref.patch_edge_energy(image, 8), tol=1e-6)


def test_random_noise(gen):
    image = torch.randn(2, 3, 29, 31, generator=gen) * 50.0 + 10.0  # any range, negative too
    assert_close(_op(image, 5), ref.patch_edge_energy(image, 5))


def test_constant_image_is_zero():
    image = torch.full((2, 3, 16, 24), 0.25)
    got = _op(image, 8)
    assert bool((got == 0).all())
    assert torch.equal(got, ref.patch_edge_energy(image, 8))


def test_huge_values_do_not_overflow(gen):
    """gx^2 + gy^2 would overflow fp32 here; the scaled magnitude does not."""
    image = make_image(gen, 1, 24, 24) * 1e30
    got = _op(image, 8)
    assert bool(torch.isfinite(got).all())
    assert_close(got, ref.patch_edge_energy(image, 8))


def test_single_bright_pixel_location(gen):
    """Only the patches whose pixels see the bright pixel in their 3x3 window light up."""
    image = torch.zeros(1, 3, 16, 16)
    image[0, :, 5, 9] = 1.0  # patch (1, 2) of a 4x4 grid of 4x4 patches
    got = _op(image, 4).reshape(4, 4)
    assert_close(got.reshape(1, 16), ref.patch_edge_energy(image, 4))
    assert got[1, 2] == got.max() and got.max() > 0.99
    assert got[3, 0] == 0 and got[0, 0] == 0


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_non_contiguous_views(gen, dtype):
    base = make_image(gen, 2, 21, 34, dtype)
    channels_last = base.contiguous(memory_format=torch.channels_last)
    buf = torch.zeros(2, 4, 2 * 21 + 1, 3 * 34 + 2, dtype=dtype)
    stepped = buf[:, 1:, 1::2, 2::3]  # row and column steps, storage offset
    stepped.copy_(base)
    hw_swapped = base.transpose(2, 3).contiguous().transpose(2, 3)
    want = _op(base, 5)
    for name, view in (("channels_last", channels_last), ("stepped", stepped), ("hw_swapped", hw_swapped)):
        assert torch.equal(view, base), name
        assert not view.is_contiguous() or name == "channels_last", name
        got = _op(view, 5)
        assert torch.equal(got, want), name  # same values, same arithmetic order: bit-identical
    if dtype == torch.float32:
        assert_close(want, ref.patch_edge_energy(base, 5))


def test_compiles_for_hopper():
    """The kernels compile for sm_90 (offline: Triton's own ptxas, no GPU needed)."""
    pytest.importorskip("triton.backends.nvidia")
    compile_for_hopper(
        """
        from lvtp_kernels.ops import edge_triton as E


        for dt, acc in (("bf16", tl.float32), ("fp64", tl.float64)):
            e = "*fp64" if dt == "fp64" else "*fp32"
            comp(E._edge_kernel, {"img_ptr": "*" + dt, "e_ptr": e, "H": "i32", "W": "i32", "w_grid": "i32",
                 "patch": "i32", "stride_b": "i32", "stride_c": "i32", "stride_h": "i32", "stride_w": "i32"},
                 dict(ACC=acc, PPAD=16, BLOCK_PW=16, P_LOOP=-1))
            comp(E._edge_normalize_kernel, {"e_ptr": e, "out_ptr": "*fp32", "L": "i32"},
                 dict(ACC=acc, BLOCK=1024, L_LOOP=-1))
        """
    )
