"""Tests of the progressive pipeline (spec steps 6, 7) and the cost model (step 8).

python_ref.pipeline (reconstruct, progressive_forward, StageRecord), the vectorised
lvtp_kernels.models.patching.reconstruct, and python_ref.flops.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch

import lvtp_kernels  # noqa: F401  (registers torch.ops.lvtp.*)
from python_ref import ops
from python_ref.flops import (
    ViTShape,
    default_stage_layers,
    schedule_for_flops,
    stage_token_counts,
    vit_flops,
)
from python_ref.pipeline import StageRecord, progressive_forward, reconstruct

lvtp_patch = importlib.import_module("lvtp_kernels.models.patching")


def _t(rows, dtype=torch.float32):
    return torch.tensor(rows, dtype=dtype)


def _rec(layer, x, keep, prune, cid):
    return StageRecord(
        layer,
        _t([x]),
        torch.tensor([keep], dtype=torch.int64),
        torch.tensor([prune], dtype=torch.int64),
        torch.tensor([cid], dtype=torch.int32),
    )


def _both_reconstructions(x_final, records, mode, clusters=8):
    return reconstruct(x_final, records, mode), lvtp_patch.reconstruct(x_final, records, mode, clusters)


# --------------------------------------------------------------------------- hand-made reconstruction
# One stage, N = 7, P = 1. Clusters: token 0 protected (-1); 1, 2, 3 in cluster 0;
# 4, 5 in cluster 1; 6 alone in cluster 2. Kept: 0, 1, 2, 4; pruned: 3, 5, 6.
ONE_X_STAGE = [[10, 10], [1, 0], [2, 0], [3, 3], [0, 1], [5, 5], [7, 7]]
ONE_KEEP, ONE_PRUNE, ONE_CID = [0, 1, 2, 4], [3, 5, 6], [-1, 0, 0, 0, 1, 1, 2]
# final features of the kept tokens, in keep_idx order; residuals x(final) - x(stage):
# token 0: (90, -110) (protected: never in a mean), 1: (1, 1), 2: (3, 2), 4: (0, 4)
ONE_X_FINAL = [[100, -100], [2, 1], [5, 2], [0, 5]]
ONE_WANT_RESIDUAL = [
    [100, -100],  # kept
    [2, 1],  # kept
    [5, 2],  # kept
    [5, 4.5],  # (3, 3) + mean((1, 1), (3, 2)) = (3, 3) + (2, 1.5)
    [0, 5],  # kept
    [5, 9],  # (5, 5) + (0, 4)
    [7, 7],  # cluster 2 has no kept token: frozen
]
ONE_WANT_FROZEN = [[100, -100], [2, 1], [5, 2], [3, 3], [0, 5], [5, 5], [7, 7]]


def test_reconstruct_one_stage_by_hand():
    rec = _rec(2, ONE_X_STAGE, ONE_KEEP, ONE_PRUNE, ONE_CID)
    x_final = _t([ONE_X_FINAL])
    for got in _both_reconstructions(x_final, [rec], "residual"):
        assert got.shape == (1, 7, 2)
        assert torch.allclose(got, _t([ONE_WANT_RESIDUAL]), atol=1e-6, rtol=0), got
    for got in _both_reconstructions(x_final, [rec], "frozen"):
        assert torch.allclose(got, _t([ONE_WANT_FROZEN]), atol=1e-6, rtol=0), got


def test_reconstruct_one_stage_batch_of_two_by_hand():
    # item 1 is item 0 with its tokens' roles changed: 5 kept instead of 4, per-item means
    rec = StageRecord(
        0,
        _t([ONE_X_STAGE, ONE_X_STAGE]),
        torch.tensor([ONE_KEEP, [0, 1, 2, 5]]),
        torch.tensor([ONE_PRUNE, [3, 4, 6]]),
        torch.tensor([ONE_CID, ONE_CID], dtype=torch.int32),
    )
    x_final = _t([ONE_X_FINAL, [[100, -100], [2, 1], [5, 2], [6, 6]]])
    want1 = [[100, -100], [2, 1], [5, 2], [5, 4.5], [1, 2], [6, 6], [7, 7]]  # 4: (0, 1) + (6, 6) - (5, 5)
    for got in _both_reconstructions(x_final, [rec], "residual"):
        assert torch.allclose(got, _t([ONE_WANT_RESIDUAL, want1]), atol=1e-6, rtol=0), got


# Two stages. Stage 1 (after block 1): N = 6, P = 1, clusters [-1, 0, 1, 1, 1, 2],
# kept 0, 1, 3, 4; pruned 2 (cluster 1), 5 (cluster 2, no kept token: frozen).
TWO_X1 = [[0, 0], [1, 0], [2, 0], [0, 2], [0, 4], [9, 9]]
# Stage 2 (after block 3) sees the 4 kept tokens (original 0, 1, 3, 4): clusters
# [-1, 0, 1, 1], kept 0, 1, 2 (original 0, 1, 3), pruned 3 (original 4).
TWO_X2 = [[1, 1], [2, 1], [1, 3], [1, 6]]
TWO_X_FINAL = [[5, 5], [4, 4], [2, 5]]  # original 0, 1, 3
# Stage 2 rebuilt (stage-2 positions): original 4 = (1, 6) + ((2, 5) - (1, 3)) = (2, 8).
# Stage 1: original 4's "final" features are its reconstruction (2, 8). Residuals of the
# kept tokens of cluster 1: original 3: (2, 5) - (0, 2) = (2, 3); original 4: (2, 8) - (0, 4)
# = (2, 4); mean (2, 3.5). Original 2 = (2, 0) + (2, 3.5) = (4, 3.5).
TWO_WANT_RESIDUAL = [[5, 5], [4, 4], [4, 3.5], [2, 5], [2, 8], [9, 9]]
TWO_WANT_FROZEN = [[5, 5], [4, 4], [2, 0], [2, 5], [1, 6], [9, 9]]


def _two_stage_records():
    return [
        _rec(1, TWO_X1, [0, 1, 3, 4], [2, 5], [-1, 0, 1, 1, 1, 2]),
        _rec(3, TWO_X2, [0, 1, 2], [3], [-1, 0, 1, 1]),
    ]


@pytest.mark.parametrize("impl", ["python_ref", "patch"])
def test_reconstruct_two_stages_by_hand(impl):
    records = _two_stage_records()
    x_final = _t([TWO_X_FINAL])
    fn = reconstruct if impl == "python_ref" else (lambda x, r, m: lvtp_patch.reconstruct(x, r, m, 8))
    got = fn(x_final, records, "residual")
    assert got.shape == (1, 6, 2)
    assert torch.allclose(got, _t([TWO_WANT_RESIDUAL]), atol=1e-6, rtol=0), got
    got = fn(x_final, records, "frozen")
    assert torch.allclose(got, _t([TWO_WANT_FROZEN]), atol=1e-6, rtol=0), got


def test_reconstruct_no_records_is_identity():
    x = torch.randn(2, 5, 3)
    for mode in ("residual", "frozen"):
        assert torch.equal(reconstruct(x, [], mode), x)
        assert torch.equal(lvtp_patch.reconstruct(x, [], mode, 8), x)


@pytest.mark.parametrize("mode", ["average", "", "Residual", None])
def test_reconstruct_bad_mode_raises(mode):
    rec = _rec(2, ONE_X_STAGE, ONE_KEEP, ONE_PRUNE, ONE_CID)
    with pytest.raises(ValueError, match="mode"):
        reconstruct(_t([ONE_X_FINAL]), [rec], mode)


def test_progressive_forward_bad_mode_raises():
    blocks, bwa = make_blocks(2, 8, 2, seed=0)
    with pytest.raises(ValueError, match="mode"):
        progressive_forward(torch.randn(1, 9, 8), blocks, [(0, 0.5)], bwa, reconstruct_mode="mean")


# --------------------------------------------------------------------------- tiny random model
def make_blocks(depth, c, heads, seed):
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(c, c, generator=g) * (0.5 / math.sqrt(c)) for _ in range(depth)]

    def make(w):
        return lambda x: x + torch.tanh(x @ w.to(x.dtype))

    blocks = [make(w) for w in weights]

    def block_with_attn(blk, x):
        b, n, _ = x.shape
        xh = x.reshape(b, n, heads, c // heads).transpose(1, 2)  # (B, H, N, d)
        attn = torch.softmax(xh @ xh.transpose(-1, -2) / math.sqrt(c), dim=-1)
        return blk(x), attn

    return blocks, block_with_attn


def run_plain(x, blocks):
    for blk in blocks:
        x = blk(x)
    return x


def final_tokens(x, blocks, records):
    """The final active tokens: the blocks after the last stage run on its kept tokens."""
    last = records[-1]
    x = ops.gather_tokens(last.x_at_stage, last.keep_idx)
    return run_plain(x, blocks[last.layer + 1 :])


SCHEDULES = [
    [(1, 0.7), (3, 0.5), (5, 0.6)],
    [(0, 0.3)],
    [(2, 0.05), (4, 0.9)],
]


@pytest.mark.parametrize("num_protected", [1, 2, 0])
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("mode", ["residual", "frozen"])
def test_patch_reconstruct_matches_reference(schedule, num_protected, mode):
    b, n0, c = 3, num_protected + 48, 16
    blocks, bwa = make_blocks(7, c, 4, seed=len(schedule) + num_protected)
    g = torch.Generator().manual_seed(17 + num_protected)
    x = torch.randn(b, n0, c, generator=g)
    edge = torch.rand(b, n0, generator=g)
    clusters = 6
    out, records = progressive_forward(
        x, blocks, schedule, bwa, edge=edge, num_protected=num_protected, reconstruct_mode=mode, clusters=clusters
    )
    assert len(records) == len(schedule)
    x_final = final_tokens(x, blocks, records)
    want = reconstruct(x_final, records, mode)
    assert torch.equal(out, want), "progressive_forward must return reconstruct(final tokens, records)"
    got = lvtp_patch.reconstruct(x_final, records, mode, clusters)
    assert got.shape == want.shape == (b, n0, c)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()
    # the final tokens sit at their original positions, unchanged
    pos = torch.arange(n0).expand(b, n0)
    for rec in records:
        pos = ops.gather_tokens(pos[..., None].float(), rec.keep_idx)[..., 0].long()
    for i in range(b):
        assert torch.equal(out[i, pos[i]], x_final[i])


def test_patch_reconstruct_matches_reference_float64():
    blocks, bwa = make_blocks(6, 8, 2, seed=3)
    x = torch.randn(2, 41, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    _, records = progressive_forward(x, blocks, [(1, 0.6), (3, 0.4)], bwa, num_protected=1, clusters=8)
    x_final = final_tokens(x, blocks, records)
    want = reconstruct(x_final, records, "residual")
    got = lvtp_patch.reconstruct(x_final, records, "residual", 8)
    assert got.dtype == torch.float64
    assert torch.allclose(got, want, atol=1e-12, rtol=0)


# --------------------------------------------------------------------------- progressive_forward
def test_keep_ratio_one_stages_are_skipped_bitwise():
    blocks, bwa = make_blocks(6, 16, 4, seed=5)
    x = torch.randn(2, 33, 16, generator=torch.Generator().manual_seed(6))
    want = run_plain(x, blocks)
    for mode in ("residual", "frozen"):
        out, records = progressive_forward(x, blocks, [(1, 1.0), (3, 1.0), (4, 1.0)], bwa, reconstruct_mode=mode)
        assert records == []
        assert torch.equal(out, want)
    out, records = progressive_forward(x, blocks, [], bwa)
    assert records == [] and torch.equal(out, want)


def test_keep_ratio_one_stage_skipped_among_others():
    blocks, bwa = make_blocks(6, 16, 4, seed=5)
    x = torch.randn(2, 33, 16, generator=torch.Generator().manual_seed(6))
    out_a, rec_a = progressive_forward(x, blocks, [(1, 1.0), (3, 0.5)], bwa)
    out_b, rec_b = progressive_forward(x, blocks, [(3, 0.5)], bwa)
    assert [r.layer for r in rec_a] == [3]
    assert rec_a[0].x_at_stage.shape[1] == 33
    assert torch.equal(out_a, out_b)
    assert torch.equal(rec_a[0].keep_idx, rec_b[0].keep_idx)


@pytest.mark.parametrize("num_protected", [0, 1, 2])
def test_progressive_forward_token_counts_and_record_shapes(num_protected):
    b, n0, c = 2, num_protected + 40, 8
    blocks, bwa = make_blocks(8, c, 2, seed=9)
    x = torch.randn(b, n0, c, generator=torch.Generator().manual_seed(10))
    schedule = [(1, 0.7), (3, 0.05), (5, 0.5), (6, 1.0)]
    out, records = progressive_forward(x, blocks, schedule, bwa, num_protected=num_protected)
    assert out.shape == (b, n0, c)
    assert [r.layer for r in records] == [1, 3, 5]
    n_in = n0
    for rec, (_, ratio) in zip(records, schedule):
        kk = max(1, math.floor(ratio * (n_in - num_protected) + 0.5))
        assert rec.x_at_stage.shape == (b, n_in, c)
        assert rec.keep_idx.shape == (b, num_protected + kk) and rec.keep_idx.dtype == torch.int64
        assert rec.prune_idx.shape == (b, n_in - num_protected - kk) and rec.prune_idx.dtype == torch.int64
        assert rec.cluster_id.shape == (b, n_in) and rec.cluster_id.dtype == torch.int32
        assert torch.equal(rec.keep_idx[:, :num_protected], torch.arange(num_protected).expand(b, -1))
        assert bool((rec.cluster_id[:, :num_protected] == -1).all())
        n_in = num_protected + kk
    # 40 -> 28 -> 1 (0.05 * 28 = 1.4 -> 1) -> 1 (0.5 * 1 + 0.5 = 1)
    assert [r.x_at_stage.shape[1] - num_protected for r in records] == [40, 28, 1]
    # the token counts agree with the cost model's
    shape = ViTShape(depth=8, embed_dim=c, num_heads=2, num_patches=40, num_protected=num_protected)
    counts = stage_token_counts(shape, schedule)
    assert [counts[r.layer] for r in records] == [r.x_at_stage.shape[1] for r in records]


def test_progressive_forward_stage_records_match_prune_with_carried_edge():
    # each stage's selection is ops.prune on that stage's tokens, with the edge gathered along
    b, n0, c, p = 2, 37, 8, 1
    blocks, bwa = make_blocks(5, c, 2, seed=12)
    g = torch.Generator().manual_seed(13)
    x = torch.randn(b, n0, c, generator=g)
    edge = torch.rand(b, n0, generator=g)
    schedule = [(0, 0.6), (2, 0.5)]
    _, records = progressive_forward(x, blocks, schedule, bwa, edge=edge, num_protected=p, alpha=0.3, clusters=4)
    e, cur = edge, x
    for rec, (layer, ratio), start in zip(records, schedule, (0, 1)):
        cur = run_plain(cur, blocks[start:layer])
        cur, attn = bwa(blocks[layer], cur)
        assert torch.equal(cur, rec.x_at_stage)
        _, keep, prune, cid = ops.prune(cur, attn, e, ratio, p, alpha=0.3, clusters=4)
        assert torch.equal(keep, rec.keep_idx) and torch.equal(prune, rec.prune_idx)
        assert torch.equal(cid, rec.cluster_id)
        cur = ops.gather_tokens(cur, keep)
        e = torch.stack([e[i, keep[i]] for i in range(b)])
    assert records[1].x_at_stage.shape[1] == p + max(1, math.floor(0.6 * (n0 - p) + 0.5))


# --------------------------------------------------------------------------- flops
SMALL = ViTShape(
    depth=2, embed_dim=8, num_heads=2, num_patches=4, mlp_ratio=4.0, num_protected=1, patch_size=2, in_chans=3,
    num_classes=3, image_hw=(4, 4),
)


def test_vit_flops_unpruned_by_hand():
    # patch embed: 2 * 4 patches * 8 dim * (3 * 2 * 2) = 768
    # block on n = 5 tokens, dim 8, hidden 32:
    #   qkv 2*5*8*24 = 1920, q k^T 2*5*5*8 = 400, p v 400, proj 2*5*8*8 = 640,
    #   MLP 2 * (2*5*8*32) = 5120  -> 8480 per block, 2 blocks = 16960
    # linear decoder on the 4 patch tokens: 2*4*8*3 = 192
    assert vit_flops(SMALL) == 768 + 16960 + 192 == 17920
    assert vit_flops(SMALL, []) == 17920
    assert vit_flops(SMALL, [(0, 1.0), (1, 1.0)]) == 17920  # keep 1.0: skipped, no overhead
    no_head = ViTShape(depth=1, embed_dim=8, num_heads=2, num_patches=4, patch_size=2)
    assert vit_flops(no_head) == 768 + 8480
    assert vit_flops(ViTShape(depth=1, embed_dim=8, num_heads=2, num_patches=4, patch_size=2, stem_flops=5.0)) == 5 + 8480


def test_vit_flops_pruned_by_hand():
    # stage after block 0 keeps K = floor(0.5 * 4 + 0.5) = 2 of 4 patch tokens -> block 1 on 3 tokens:
    #   2*3*8*24 + 4*3*3*8 + 2*3*8*8 + 4*3*8*32 = 1152 + 288 + 384 + 3072 = 4896
    # prune on 5 tokens: entropy 2 * 2 heads * 5 * 5 * 4 orders = 400,
    #   k-means on 4 tokens, k = 4, d = 8, 10 iters: 11 * 3*4*4*8 + 10 * 4*8 = 4224 + 320 = 4544
    # residual reconstruction 2 * 5 * 8 = 80, edge energy 32 * 4 * 4 = 512
    want = 768 + 8480 + 4896 + 400 + 4544 + 80 + 512 + 192
    assert vit_flops(SMALL, [(0, 0.5)]) == want == 19872
    frozen = ViTShape(**{**SMALL.__dict__, "reconstruct": "frozen", "use_edge": False})
    assert vit_flops(frozen, [(0, 0.5)]) == want - 80 - 512


def test_stage_token_counts():
    base = ViTShape(depth=12, embed_dim=768, num_heads=12, num_patches=196)
    assert stage_token_counts(base, []) == [197] * 12
    # 196 -> round(137.2) = 137 -> round(95.9) = 96 -> round(67.2) = 67
    want = [197] * 4 + [138] * 3 + [97] * 3 + [68] * 2
    assert stage_token_counts(base, [(3, 0.7), (6, 0.7), (9, 0.7)]) == want
    assert stage_token_counts(base, [(3, 0.7), (6, 1.0), (9, 0.7)]) == [197] * 4 + [138] * 6 + [97] * 2
    two = ViTShape(depth=4, embed_dim=8, num_heads=2, num_patches=10, num_protected=2)
    assert stage_token_counts(two, [(0, 0.01)]) == [12, 3, 3, 3]  # K never below 1


SHAPES = {
    "vit-b-512": ViTShape(depth=12, embed_dim=768, num_heads=12, num_patches=1024, num_classes=150, image_hw=(512, 512)),
    "vit-s-224": ViTShape(depth=12, embed_dim=384, num_heads=6, num_patches=196, num_classes=21, image_hw=(224, 224)),
    "vit-l-reg": ViTShape(
        depth=24, embed_dim=1024, num_heads=16, num_patches=1024, num_protected=5, num_classes=150, image_hw=(512, 512)
    ),
}


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("reduction", [0.2, 0.3, 0.45])
def test_schedule_for_flops_hits_target(name, reduction):
    shape = SHAPES[name]
    sched = schedule_for_flops(shape, reduction)
    assert [layer for layer, _ in sched] == default_stage_layers(shape.depth)
    ratios = {r for _, r in sched}
    assert len(ratios) == 1 and 0.0 < ratios.pop() < 1.0
    got = vit_flops(shape, sched) / vit_flops(shape)
    assert abs(got - (1.0 - reduction)) <= 0.02, (got, 1.0 - reduction)


def test_schedule_for_flops_custom_layers_and_reexport():
    shape = SHAPES["vit-s-224"]
    sched = schedule_for_flops(shape, 0.3, layers=[2, 5])
    assert [layer for layer, _ in sched] == [2, 5]
    assert abs(vit_flops(shape, sched) / vit_flops(shape) - 0.7) <= 0.02
    assert lvtp_kernels.schedule_for_flops(shape, 0.3) == schedule_for_flops(shape, 0.3)


def test_schedule_for_flops_zero_reduction_keeps_everything():
    shape = SHAPES["vit-b-512"]
    sched = schedule_for_flops(shape, 0.0)
    assert sched == [(3, 1.0), (6, 1.0), (9, 1.0)]
    assert vit_flops(shape, sched) == vit_flops(shape)


def test_schedule_for_flops_unreachable_raises():
    with pytest.raises(ValueError, match=r"schedule_for_flops: reduction 0\.95 is out of reach"):
        schedule_for_flops(SHAPES["vit-b-512"], 0.95)


@pytest.mark.parametrize("reduction", [-0.1, 1.0, 1.5, float("nan"), float("inf")])
def test_schedule_for_flops_invalid_reduction_raises(reduction):
    with pytest.raises(ValueError, match=r"schedule_for_flops: reduction must be in \[0, 1\)"):
        schedule_for_flops(SHAPES["vit-b-512"], reduction)


def test_schedule_for_flops_bad_layers_raise():
    with pytest.raises(ValueError, match="layers"):
        schedule_for_flops(SHAPES["vit-b-512"], 0.3, layers=[3, 12])


def test_default_stage_layers():
    assert default_stage_layers(12) == [3, 6, 9]
    assert default_stage_layers(24) == [6, 12, 18]
    assert default_stage_layers(16) == [4, 8, 12]
