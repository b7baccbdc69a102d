"""``lvtp::patch_edge_energy``: Sobel edge energy per patch (spec step 3).

    patch_edge_energy(Tensor image, int patch) -> Tensor
    image (B, 3, H, W) RGB, any float dtype -> (B, (H // patch) * (W // patch)) float32 in [0, 1]

Everything about the op in one place: schema, check, fake, backends.

* reference  python_ref.ops.patch_edge_energy
* triton     lvtp_kernels/ops/edge_triton.py (luminance + Sobel + patch mean in one pass)
* cpp        csrc/edge_cpu.cpp
* test       tests/test_op_edge.py   benchmark  benchmarks/bench_edge.py
"""

from __future__ import annotations

import torch

import python_ref

from .. import _validate as V
from .. import registry

OP = "patch_edge_energy"
SCHEMA = "(Tensor image, int patch) -> Tensor"


def check(image, patch, values: bool) -> None:
    V.tensor(OP, "image", image, 4, "(B, 3, H, W)")
    if image.shape[1] != 3:
        V._fail(OP, f"image must have 3 channels (RGB) in dim 1, got shape {tuple(image.shape)}")
    V.positive_int(OP, "patch", patch)
    if image.shape[2] < patch or image.shape[3] < patch:
        V._fail(OP, f"image ({image.shape[2]}x{image.shape[3]}) is smaller than one patch of {patch}")
    if values:
        V.finite(OP, "image", image)


def fake(image, patch):
    b, _, height, width = image.shape
    return image.new_empty((b, (height // patch) * (width // patch)), dtype=torch.float32)


SPEC = registry.define(registry.OpSpec(
    OP, SCHEMA, check, fake,
    backends={
        "ref": registry.Backend(python_ref.patch_edge_energy),
        "triton": registry.triton_backend("edge_triton", "patch_edge_energy"),
        "cpp": registry.compiled_backend("cpp", "patch_edge_energy"),
    },
))
