"""CamVid data loading / augmentation (lvtp_kernels.app.data.camvid) and the segmentation
metrics (lvtp_kernels.app.data.metrics), on a tiny synthetic dataset built in tmp_path."""

from __future__ import annotations

import itertools
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from lvtp_kernels.app.data import (
    IGNORE_INDEX,
    MEAN,
    NUM_CLASSES,
    STD,
    ConfusionMatrix,
    SegSample,
    augment,
    boundary_mask,
    load_split,
    normalize,
    read_pairs,
    resize_image,
)

H, W = 48, 64


def _label_map(rng: np.random.Generator, void: bool = True) -> np.ndarray:
    """4x4 blocks of classes 0..10, plus a void strip on top."""
    lbl = np.zeros((H, W), np.uint8)
    for r in range(4):
        for c in range(4):
            lbl[r * 12 : (r + 1) * 12, c * 16 : (c + 1) * 16] = rng.integers(0, NUM_CLASSES)
    if void:
        lbl[:3, :] = IGNORE_INDEX
    return lbl


def make_dataset(root, n_train: int = 4, n_val: int = 3, seed: int = 0, void: bool = True) -> str:
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    os.makedirs(os.path.join(root, "lbl"), exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        lines = []
        for i in range(n):
            lbl = _label_map(rng, void)
            img = (rng.random((H, W, 3)) * 60 + (lbl[..., None] % 12) * 15).astype(np.uint8)
            Image.fromarray(img).save(os.path.join(root, "img", f"{split}{i}.png"))
            Image.fromarray(lbl).save(os.path.join(root, "lbl", f"{split}{i}.png"))
            lines.append(f"img/{split}{i}.png lbl/{split}{i}.png")
        with open(os.path.join(root, f"{split}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return str(root)


# --------------------------------------------------------------------------- read_pairs / load_split
def test_read_pairs_absolute_paths_and_blank_lines(tmp_path):
    d = make_dataset(tmp_path)
    with open(os.path.join(d, "val.txt"), "a") as f:
        f.write("\n   \n")  # trailing blank lines are skipped
    pairs = read_pairs(d, "val")
    assert pairs == [
        (os.path.join(d, f"img/val{i}.png"), os.path.join(d, f"lbl/val{i}.png")) for i in range(3)
    ]
    assert all(os.path.isfile(p) for pair in pairs for p in pair)


def test_read_pairs_missing_file_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError) as ei:
        read_pairs(str(tmp_path), "test")
    assert os.path.join(str(tmp_path), "test.txt") in str(ei.value)


def test_read_pairs_malformed_line_names_file_and_line(tmp_path):
    (tmp_path / "train.txt").write_text("a.png a_l.png\nb.png b_l.png extra\n")
    with pytest.raises(ValueError) as ei:
        read_pairs(str(tmp_path), "train")
    msg = str(ei.value)
    assert os.path.join(str(tmp_path), "train.txt") + ":2" in msg
    assert "extra" in msg


def test_read_pairs_single_column_line_is_an_error(tmp_path):
    (tmp_path / "val.txt").write_text("only_one.png\n")
    with pytest.raises(ValueError, match=r"val\.txt:1"):
        read_pairs(str(tmp_path), "val")


def test_read_pairs_empty_list_is_an_error(tmp_path):
    (tmp_path / "val.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="empty"):
        read_pairs(str(tmp_path), "val")


def test_load_split_shapes_dtypes_names_and_limit(tmp_path):
    d = make_dataset(tmp_path)
    samples = load_split(d, "train")
    assert len(samples) == 4
    assert [s.name for s in samples] == [f"train{i}" for i in range(4)]
    for i, s in enumerate(samples):
        assert isinstance(s, SegSample)
        assert s.image.shape == (3, H, W) and s.image.dtype == torch.uint8
        assert s.label.shape == (H, W) and s.label.dtype == torch.uint8
        # pixel-exact round trip of the label PNG and the RGB PNG (CHW)
        ref_lbl = np.array(Image.open(os.path.join(d, f"lbl/train{i}.png")))
        ref_img = np.array(Image.open(os.path.join(d, f"img/train{i}.png")))
        assert torch.equal(s.label, torch.from_numpy(ref_lbl))
        assert torch.equal(s.image, torch.from_numpy(ref_img).permute(2, 0, 1))
    assert int(samples[0].label.max()) == IGNORE_INDEX
    assert len(load_split(d, "val", limit=2)) == 2


def test_load_split_size_mismatch_names_the_image(tmp_path):
    d = make_dataset(tmp_path, n_train=2)
    Image.fromarray(np.zeros((H, W + 2), np.uint8)).save(os.path.join(d, "lbl/train1.png"))
    with pytest.raises(ValueError) as ei:
        load_split(d, "train")
    msg = str(ei.value)
    assert "train1.png" in msg and str((H, W)) in msg and str((H, W + 2)) in msg


def test_load_split_rejects_rgb_label(tmp_path):
    d = make_dataset(tmp_path, n_train=1)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(os.path.join(d, "lbl/train0.png"))
    with pytest.raises(ValueError, match="single-channel"):
        load_split(d, "train")


# --------------------------------------------------------------------------- normalize / resize
def test_normalize_uint8_and_unit_float_agree():
    img = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    a = normalize(img)
    b = normalize(img.float() / 255.0)
    assert a.dtype == torch.float32 and a.shape == img.shape
    torch.testing.assert_close(a, b)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(a, (img.float() / 255.0 - mean) / std)


def test_resize_image_shapes_and_identity():
    img = torch.randint(0, 256, (3, 12, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    same = resize_image(img, (12, 16))
    assert same.dtype == torch.float32 and torch.equal(same, img.float())
    up = resize_image(img, (24, 32))
    assert up.shape == (3, 24, 32)
    assert float(up.min()) >= 0.0 and float(up.max()) <= 255.0
    batched = resize_image(img[None].expand(2, -1, -1, -1), (6, 8))
    assert batched.shape == (2, 3, 6, 8)
    # a constant image stays constant
    const = resize_image(torch.full((3, 12, 16), 77, dtype=torch.uint8), (7, 9))
    torch.testing.assert_close(const, torch.full((3, 7, 9), 77.0))


# --------------------------------------------------------------------------- augment
def _sample(void: bool = True, seed: int = 0) -> SegSample:
    rng = np.random.default_rng(seed)
    lbl = _label_map(rng, void)
    img = (rng.random((H, W, 3)) * 255).astype(np.uint8)
    return SegSample("s", torch.from_numpy(img).permute(2, 0, 1).contiguous(), torch.from_numpy(lbl))


@pytest.mark.parametrize("out_hw", [(32, 48), (40, 40), (64, 96)])
def test_augment_shapes_ranges_and_label_values(out_hw):
    s = _sample()
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        img, lbl = augment(s, out_hw, gen)
        assert img.shape == (3, *out_hw) and img.dtype == torch.float32
        assert float(img.min()) >= 0.0 and float(img.max()) <= 255.0
        assert lbl.shape == out_hw and lbl.dtype == torch.int64
        assert set(lbl.unique().tolist()) <= set(range(NUM_CLASSES + 1))


def test_augment_is_deterministic_for_a_seed():
    s = _sample()
    outs = []
    for seed in (7, 7, 8):
        gen = torch.Generator().manual_seed(seed)
        outs.append([augment(s, (32, 48), gen) for _ in range(3)])
    for (i1, l1), (i2, l2) in zip(outs[0], outs[1]):
        assert torch.equal(i1, i2) and torch.equal(l1, l2)
    assert any(not torch.equal(i1, i3) for (i1, _), (i3, _) in zip(outs[0], outs[2]))


def test_augment_pads_with_void_when_scaled_below_the_crop():
    s = _sample(void=False)  # no void in the source: every void pixel is padding
    gen = torch.Generator().manual_seed(0)
    out_hw = (40, 60)
    img, lbl = augment(s, out_hw, gen, scale=(0.5, 0.5), jitter=0.0)  # scaled to 24x32
    valid = lbl != IGNORE_INDEX
    assert int(valid.sum()) == 24 * 32
    assert int((~valid).sum()) == 40 * 60 - 24 * 32
    # the valid part is one 24x32 rectangle in the top-left (padding goes bottom/right;
    # a flip may move it to the right)
    rows = valid.any(1).nonzero().flatten()
    cols = valid.any(0).nonzero().flatten()
    assert rows.tolist() == list(range(24))
    assert cols.numel() == 32 and int(cols[-1] - cols[0]) == 31 and cols[0] in (0, 60 - 32)
    assert bool(valid[:24, int(cols[0]) : int(cols[0]) + 32].all())
    # image padding is black (no jitter)
    assert float(img[:, ~valid].abs().max()) == 0.0
    assert float(img[:, valid].max()) > 0.0


def test_augment_without_rescale_jitter_is_a_crop_or_flipped_crop():
    s = _sample(seed=5)
    gen = torch.Generator().manual_seed(11)
    for _ in range(4):
        img, lbl = augment(s, (H, W), gen, scale=(1.0, 1.0), jitter=0.0)
        direct = (torch.equal(lbl, s.label.long()), torch.allclose(img, s.image.float(), atol=1e-3))
        flipped = (torch.equal(lbl, s.label.long().flip(-1)), torch.allclose(img, s.image.float().flip(-1), atol=1e-3))
        assert direct == (True, True) or flipped == (True, True)


# --------------------------------------------------------------------------- ConfusionMatrix
def _hand_miou(pred, label, num_classes, mask=None):
    """Brute-force per-class IoU over pixels with a real label (and inside mask)."""
    pairs = [(int(p), int(l)) for p, l, m in zip(pred.flatten(), label.flatten(),
                                                   (mask.flatten() if mask is not None else [True] * label.numel()))
             if m and 0 <= int(l) < num_classes]
    ious = {}
    for c in range(num_classes):
        tp = sum(1 for p, l in pairs if p == c and l == c)
        fp = sum(1 for p, l in pairs if p == c and l != c)
        fn = sum(1 for p, l in pairs if p != c and l == c)
        if tp + fn > 0:  # present in the labels
            ious[c] = tp / (tp + fp + fn)
    return ious, 100.0 * sum(ious.values()) / len(ious)


def test_confusion_matrix_small_hand_example():
    label = torch.tensor([[0, 0, 1, 1], [2, 2, 11, 11]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 3, 0]])
    cm = ConfusionMatrix(4)
    cm.update(pred, label)
    # void (11) ignored -> 6 pixels: class0: tp1 fp1 fn1 -> 1/3; class1: tp2 fp1 -> 2/3;
    # class2: tp1 fn1 -> 1/2; class3 absent from labels (and predicted only on void) -> skipped
    assert int(cm.mat.sum()) == 6
    assert cm.miou() == pytest.approx(100.0 * (1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert cm.pixel_acc() == pytest.approx(100.0 * 4 / 6)
    pc = cm.per_class(["a", "b", "c", "d"])
    assert pc["a"] == pytest.approx(100 / 3) and pc["b"] == pytest.approx(200 / 3) and pc["c"] == pytest.approx(50)
    assert pc["d"] is None  # never labelled nor predicted (void pixels are not counted): JSON null


def test_confusion_matrix_rejects_out_of_range_predictions():
    cm = ConfusionMatrix(4)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        cm.update(torch.tensor([[0, 4]]), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="-1"):
        cm.update(torch.tensor([[-1, 0]]), torch.tensor([[0, 1]]))


def test_confusion_matrix_class_predicted_but_never_labelled_is_skipped():
    label = torch.tensor([0, 0, 0, 1])
    pred = torch.tensor([0, 2, 0, 1])
    cm = ConfusionMatrix(3)
    cm.update(pred, label)
    iou = cm.iou()
    assert float(iou[2]) == 0.0  # predicted only: IoU 0 but not part of the mean
    assert cm.miou() == pytest.approx(100.0 * (2 / 3 + 1.0) / 2)


def test_confusion_matrix_matches_brute_force_with_mask_and_accumulation():
    g = torch.Generator().manual_seed(0)
    cm, cm_masked = ConfusionMatrix(NUM_CLASSES), ConfusionMatrix(NUM_CLASSES)
    preds, labels, masks = [], [], []
    for _ in range(3):
        label = torch.randint(0, 12, (2, 6, 7), generator=g)  # includes void 11
        label[label == 4] = 5  # class 4 never labelled
        pred = torch.randint(0, NUM_CLASSES, (2, 6, 7), generator=g)
        mask = torch.rand(2, 6, 7, generator=g) < 0.5
        cm.update(pred, label)
        cm_masked.update(pred, label, mask)
        preds.append(pred), labels.append(label), masks.append(mask)
    pred, label, mask = torch.cat(preds), torch.cat(labels), torch.cat(masks)
    ious, miou = _hand_miou(pred, label, NUM_CLASSES)
    assert 4 not in ious
    assert cm.miou() == pytest.approx(miou, abs=1e-9)
    iou = cm.iou()
    for c, v in ious.items():
        assert float(iou[c]) == pytest.approx(v)
    valid = label != IGNORE_INDEX
    assert cm.pixel_acc() == pytest.approx(100.0 * float((pred == label)[valid].float().mean()))
    _, miou_m = _hand_miou(pred, label, NUM_CLASSES, mask)
    assert cm_masked.miou() == pytest.approx(miou_m, abs=1e-9)
    assert int(cm_masked.mat.sum()) == int((valid & mask).sum())
    assert cm_masked.miou() != pytest.approx(cm.miou())


def test_confusion_matrix_empty_and_shape_mismatch():
    cm = ConfusionMatrix(3)
    assert math.isnan(cm.miou())
    cm.update(torch.tensor([0]), torch.tensor([11]))  # void only
    assert math.isnan(cm.miou()) and cm.pixel_acc() == 0.0
    with pytest.raises(ValueError, match="differ"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))


# --------------------------------------------------------------------------- boundary_mask
def _brute_band(label: torch.Tensor, width: int) -> torch.Tensor:
    """Pixels within ``width`` (Chebyshev) of a pixel that has a 4-neighbour of another label."""
    h, w = label.shape
    lbl = label.tolist()
    edge = [[False] * w for _ in range(h)]
    for y, x in itertools.product(range(h), range(w)):
        for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
            yy, xx = y + dy, x + dx
            if 0 <= yy < h and 0 <= xx < w and lbl[yy][xx] != lbl[y][x]:
                edge[y][x] = True
    edges = [(y, x) for y, x in itertools.product(range(h), range(w)) if edge[y][x]]
    out = torch.zeros(h, w, dtype=torch.bool)
    for y, x in itertools.product(range(h), range(w)):
        out[y, x] = any(max(abs(y - ey), abs(x - ex)) <= width for ey, ex in edges)
    return out


def test_boundary_mask_two_regions_band_width():
    label = torch.zeros(8, 30, dtype=torch.uint8)
    label[:, 12:] = 3
    band = boundary_mask(label)
    assert band.shape == label.shape and band.dtype == torch.bool
    # change between columns 11 and 12: both are edge pixels; band = columns 6..17
    expected = torch.zeros(30, dtype=torch.bool)
    expected[6:18] = True
    assert torch.equal(band, expected.expand(8, -1))
    band2 = boundary_mask(label, width=2)
    expected2 = torch.zeros(30, dtype=torch.bool)
    expected2[9:15] = True
    assert torch.equal(band2, expected2.expand(8, -1))


def test_boundary_mask_void_counts_as_a_label():
    label = torch.zeros(20, 9, dtype=torch.long)
    label[10:] = IGNORE_INDEX  # horizontal change to void
    band = boundary_mask(label)
    expected = torch.zeros(20, dtype=torch.bool)
    expected[4:16] = True  # rows 9 and 10 are edges, +-5
    assert torch.equal(band, expected[:, None].expand(-1, 9))


def test_boundary_mask_uniform_label_is_empty():
    assert not bool(boundary_mask(torch.full((12, 13), 5)).any())
    assert not bool(boundary_mask(torch.full((2, 12, 13), IGNORE_INDEX)).any())


def test_boundary_mask_matches_brute_force_and_batches():
    g = torch.Generator().manual_seed(2)
    a = torch.zeros(16, 18, dtype=torch.long)
    a[4:9, 5:11] = 2  # a block
    a[12, 15] = 11  # an isolated void pixel
    b = torch.randint(0, 3, (4, 5), generator=g).repeat_interleave(4, 0).repeat_interleave(4, 1)[:16, :18]
    b = torch.nn.functional.pad(b, (0, 18 - b.shape[1], 0, 16 - b.shape[0]))
    batch = torch.stack([a, b])
    band = boundary_mask(batch, width=3)
    assert band.shape == (2, 16, 18) and band.dtype == torch.bool
    for i in range(2):
        assert torch.equal(band[i], _brute_band(batch[i], 3))
        assert torch.equal(boundary_mask(batch[i], width=3), band[i])
    assert torch.equal(boundary_mask(a), _brute_band(a, 5))
    # the isolated void pixel alone gives an 11x11 square (clipped at the border)
    single = torch.zeros(20, 20, dtype=torch.long)
    single[10, 10] = IGNORE_INDEX
    band = boundary_mask(single)
    # edge pixels: the void pixel and its 4 neighbours (a plus); dilated by 5 that is the
    # 13x13 square around it without its 4 corner pixels
    assert int(band.sum()) == 13 * 13 - 4
    assert bool(band[4:17, 5:16].all()) and bool(band[5:16, 4:17].all())
    assert not bool(band[4, 4]) and not bool(band[16, 16]) and not bool(band[3, 10]) and not bool(band[10, 17])
    assert torch.equal(band, _brute_band(single, 5))


# --------------------------------------------------------------------------- sequence-disjoint splits
def _seq_lists(tmp_path):
    """train: two frames of AAA and one of BBB; val: one of AAA and two of CCC."""
    (tmp_path / "train.txt").write_text("t/AAA_1.png l/AAA_1.png\nt/AAA_2.png l/AAA_2.png\nt/BBB_1.png l/BBB_1.png\n")
    (tmp_path / "val.txt").write_text("v/AAA_9.png l/AAA_9.png\nv/CCC_1.png l/CCC_1.png\nv/CCC_2.png l/CCC_2.png\n")
    return str(tmp_path)


def test_sequence_selections_are_disjoint_and_cover_the_pool(tmp_path):
    from lvtp_kernels.app.data import sequence_of

    d = _seq_lists(tmp_path)
    pool = read_pairs(d, "train") + read_pairs(d, "val")
    names = lambda pairs: [os.path.basename(p[0]) for p in pairs]  # noqa: E731
    assert names(read_pairs(d, "seq:AAA")) == ["AAA_1.png", "AAA_2.png", "AAA_9.png"]  # from train and val
    assert names(read_pairs(d, "except:AAA")) == ["BBB_1.png", "CCC_1.png", "CCC_2.png"]
    assert names(read_pairs(d, "seq:BBB,CCC")) == names(read_pairs(d, "except:AAA"))
    for held in ("AAA", "BBB", "CCC"):
        inside, outside = read_pairs(d, f"seq:{held}"), read_pairs(d, f"except:{held}")
        assert not {sequence_of(p[0]) for p in inside} & {sequence_of(p[0]) for p in outside}
        assert sorted(inside + outside) == sorted(pool)


@pytest.mark.parametrize("split,match", [
    ("seq:ZZZ", r"unknown sequence\(s\) \['ZZZ'\]; the train\+val pool has \['AAA', 'BBB', 'CCC'\]"),
    ("seq:", "split list"),  # an empty selection is a list name "seq:" that does not exist
    ("only:AAA", "a selection is seq:NAMES or except:NAMES"),
    ("except:AAA,BBB,CCC", "selects no frame"),
])
def test_bad_sequence_selection_names_the_split(tmp_path, split, match):
    d = _seq_lists(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        read_pairs(d, split)


# --------------------------------------------------------------------------- bootstrap over images
def test_batched_miou_matches_confusion_matrix(gen):
    from lvtp_kernels.app.data import miou_of

    for trial in range(20):
        c = 5
        pred = torch.randint(0, c, (30, 7), generator=gen)
        label = torch.randint(0, c + 1, (30, 7), generator=gen)  # c: void
        label[label == trial % c] = c  # a class absent from the labels in each trial
        cm = ConfusionMatrix(c)
        cm.update(pred, label)
        assert float(miou_of(cm.mat)) == pytest.approx(cm.miou(), abs=1e-9)


def test_bootstrap_counts_draw_n_images_each_and_are_seeded():
    from lvtp_kernels.app.data import bootstrap_counts

    c = bootstrap_counts(17, 500, seed=3)
    assert c.shape == (500, 17) and bool((c.sum(1) == 17).all()) and bool((c >= 0).all())
    assert torch.equal(c, bootstrap_counts(17, 500, seed=3)) and not torch.equal(c, bootstrap_counts(17, 500, seed=4))
    # every image is drawn with probability 1/n per draw: mean count 1
    assert float(c.double().mean()) == pytest.approx(1.0)
    assert 0.9 < float(c.double().mean(0).min()) and float(c.double().mean(0).max()) < 1.1


def test_bootstrap_interval_covers_and_paired_difference_is_exact(gen):
    from lvtp_kernels.app.data.metrics import percentile_ci, resampled_miou
    from lvtp_kernels.app.data import bootstrap_counts

    c, n = 4, 40
    labels = torch.randint(0, c, (n, 16), generator=gen)
    good = torch.where(torch.rand(n, 16, generator=gen) < 0.9, labels, torch.randint(0, c, (n, 16), generator=gen))
    mats = []
    for i in range(n):
        cm = ConfusionMatrix(c)
        cm.update(good[i], labels[i])
        mats.append(cm.mat)
    per_image = torch.stack(mats)
    counts = bootstrap_counts(n, 400)
    m = resampled_miou(per_image, counts)
    total = ConfusionMatrix(c)
    total.mat = per_image.sum(0)
    lo, hi = percentile_ci(m)
    assert lo < total.miou() < hi and hi - lo > 0.1  # a real spread, around the full-data value
    # the same predictions as "another method": every paired difference is exactly 0
    d = m - resampled_miou(per_image.clone(), counts)
    assert percentile_ci(d) == [0.0, 0.0]
