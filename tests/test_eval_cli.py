"""The evaluation harness (lvtp_kernels.app.evaluate), ``lvtp eval`` / ``lvtp train-reference``,
the reference checkpoint round trip, and the conv stem's cost model; on a tiny synthetic
dataset and tiny models (CPU, a few seconds)."""

from __future__ import annotations

import dataclasses
import json
import re
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import lvtp_kernels
from lvtp_kernels.app import cli
from lvtp_kernels import flops as lflops
from lvtp_kernels.app.baselines import METHODS
from lvtp_kernels.app.data import IGNORE_INDEX, NUM_CLASSES, ConfusionMatrix, boundary_mask, load_split
from lvtp_kernels.app.evaluate import markdown_table, method_gflops, run_eval
from lvtp_kernels.models import load_reference
from lvtp_kernels.models.vit import ConvStem, ViTSegmenter, conv_stem_channels, conv_stem_flops, drop_path, vit_config
from lvtp_kernels.app.segment import prepare
from lvtp_kernels.app.train import lr_at, read_log, train_reference
from lvtp_kernels.models.checkpoint import export_fp16, load_checkpoint
from python_ref.flops import vit_flops

H, W = 48, 64
IMG = (96, 128)  # the tiny eval model's input: 6 x 8 = 48 patch tokens
TRAIN_SIZE = "64x96"  # the CLI trainer's vit_ti at 4 x 6 = 24 patch tokens
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_dataset(root, n_train: int = 4, n_val: int = 3, seed: int = 0) -> str:
    """RGB 48x64 photos and 8-bit label maps of 4x4 class blocks (0..10) with a void strip."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "photos"), exist_ok=True)
    os.makedirs(os.path.join(root, "labels"), exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        lines = []
        for i in range(n):
            lbl = np.zeros((H, W), np.uint8)
            for r in range(4):
                for c in range(4):
                    lbl[r * 12 : (r + 1) * 12, c * 16 : (c + 1) * 16] = rng.integers(0, NUM_CLASSES)
            lbl[:3] = IGNORE_INDEX
            img = np.clip(rng.normal(0, 20, (H, W, 3)) + lbl[..., None] * 20, 0, 255).astype(np.uint8)
            Image.fromarray(img).save(os.path.join(root, "photos", f"{split}_{i}.png"))
            Image.fromarray(lbl).save(os.path.join(root, "labels", f"{split}_{i}.png"))
            lines.append(f"photos/{split}_{i}.png labels/{split}_{i}.png")
        with open(os.path.join(root, f"{split}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return str(root)


def tiny_model(img_size=IMG, seed: int = 0) -> ViTSegmenter:
    cfg = vit_config("vit_ti", img_size=img_size, embed_dim=48, depth=6, num_heads=3, stem="conv")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ViTSegmenter(cfg).eval()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("camvid"))


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def model_path(model, tmp_path_factory):
    return export_fp16(model, model.cfg, str(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"))


@pytest.fixture(scope="module")
def eval_result(data_dir, model):
    return run_eval(data_dir, "val", model=model, reductions=[0.3], methods=["lvtp", "evit", "tome", "random"],
                    progress=False, log=lambda s: None)


# --------------------------------------------------------------------------- run_eval
def test_run_eval_json_structure(eval_result):
    res = eval_result
    json.loads(json.dumps(res))  # serialisable
    assert res["split"] == "val" and res["images"] == 3
    assert res["img_size"] == list(IMG)
    b = res["baseline"]
    assert {"miou", "boundary_miou", "gflops", "gflops_counted", "images_per_s"} <= set(b)
    assert 0.0 <= b["miou"] <= 100.0 and 0.0 <= b["boundary_miou"] <= 100.0
    assert b["images_per_s"] > 0
    assert [r["method"] for r in res["results"]] == ["lvtp", "evit", "tome", "random"]
    keys = {"method", "target_reduction", "reduction", "gflops", "miou", "boundary_miou", "miou_drop", "images_per_s"}
    for r in res["results"]:
        assert keys <= set(r), keys - set(r)
        assert r["target_reduction"] == 0.3
        assert 0.0 < r["gflops"] < b["gflops"]
        assert r["reduction"] == pytest.approx(1.0 - r["gflops"] / b["gflops"])
        assert 0.0 <= r["miou"] <= 100.0 and 0.0 <= r["boundary_miou"] <= 100.0
        assert r["miou_drop"] == pytest.approx(b["miou"] - r["miou"])
        assert r["boundary_miou_drop"] == pytest.approx(b["boundary_miou"] - r["boundary_miou"])
        assert r["images_per_s"] > 0
        assert set(r["per_class"]) == set(lvtp_kernels.app.data.CLASS_NAMES)
    # every method prunes after the same layers, its keep ratios solved on its own cost
    # model so that all spend the same GFLOPs (within the solver's tolerance)
    assert len({json.dumps([s[0] for s in r["schedule"]]) for r in res["results"]}) == 1
    for r in res["results"]:
        assert abs(r["reduction"] - 0.3) <= 0.03, r["method"]


def test_run_eval_reduction_and_flops(eval_result, model):
    res = eval_result
    b = res["baseline"]
    assert b["gflops"] == pytest.approx(vit_flops(model.vit_shape(IMG)) / 1e9, rel=1e-12)
    assert b["gflops_counted"] == pytest.approx(b["gflops"], rel=0.01)
    lv = res["results"][0]
    assert abs(lv["reduction"] - 0.3) <= 0.03
    assert lv["gflops"] == pytest.approx(method_gflops(model, METHODS["lvtp"], lv["schedule"], IMG))
    for r in res["results"]:
        assert r["gflops_counted"] == pytest.approx(r["gflops"], rel=0.01), r["method"]


def _scores(run, samples, size):
    cm, cm_b = ConfusionMatrix(NUM_CLASSES), ConfusionMatrix(NUM_CLASSES)
    for s in samples:
        with torch.no_grad():
            logits = run(prepare(s.image[None], size))
        pred = F.interpolate(logits, size=s.label.shape, mode="bilinear", align_corners=False).argmax(1)
        lbl = s.label[None].long()
        cm.update(pred, lbl)
        cm_b.update(pred, lbl, boundary_mask(lbl))
    return cm.miou(), cm_b.miou()


def test_run_eval_scores_match_an_independent_computation(eval_result, data_dir, model):
    samples = load_split(data_dir, "val")
    miou, bmiou = _scores(model, samples, IMG)
    assert eval_result["baseline"]["miou"] == pytest.approx(miou, abs=1e-9)
    assert eval_result["baseline"]["boundary_miou"] == pytest.approx(bmiou, abs=1e-9)
    lv = eval_result["results"][0]
    lvtp_kernels.patch(model, schedule=[tuple(s) for s in lv["schedule"]])
    try:
        miou_p, bmiou_p = _scores(model, samples, IMG)
    finally:
        lvtp_kernels.unpatch(model)
    assert lv["miou"] == pytest.approx(miou_p, abs=1e-9)
    assert lv["boundary_miou"] == pytest.approx(bmiou_p, abs=1e-9)
    assert not lvtp_kernels.is_patched(model)


def test_markdown_table_rows(eval_result):
    md = markdown_table(eval_result)
    main_table = md.split("\n\n")[1]  # the paired-differences table follows it
    rows = [ln for ln in main_table.splitlines() if ln.startswith("| ") and not ln.startswith("| method")]
    assert [r.split("|")[1].strip() for r in rows] == ["unpruned", "lvtp", "evit", "tome", "random"]
    assert f"{eval_result['baseline']['miou']:.2f}" in rows[0]
    assert "Split `val`, 3 images, model input 96x128." in md


def test_run_eval_from_a_checkpoint_path(data_dir, model_path, model):
    res = run_eval(data_dir, "val", model_path=model_path, reductions=[0.3], methods=["random"], limit=2,
                   progress=False, log=lambda s: None)
    assert res["images"] == 2 and res["model"] == "tiny.safetensors"
    assert res["baseline"]["gflops"] == pytest.approx(vit_flops(model.vit_shape(IMG)) / 1e9)
    assert [r["method"] for r in res["results"]] == ["random"]
    # scored with the checkpoint's (fp16-rounded) weights
    miou, bmiou = _scores(load_reference(model_path), load_split(data_dir, "val", 2), IMG)
    assert res["baseline"]["miou"] == pytest.approx(miou, abs=1e-9)
    assert res["baseline"]["boundary_miou"] == pytest.approx(bmiou, abs=1e-9)


# --------------------------------------------------------------------------- lvtp eval
def test_cli_eval_writes_json_markdown_and_plot(data_dir, model_path, tmp_path, capsys):
    out_json = tmp_path / "out" / "r.json"
    rc = cli.main(["eval", "--data", data_dir, "--model", model_path, "--limit", "2", "--reductions", "0.3",
                   "--methods", "lvtp,random", "--json", str(out_json), "--no-progress"])
    assert rc == 0
    res = json.loads(out_json.read_text())
    assert res["images"] == 2 and res["split"] == "val"
    assert [r["method"] for r in res["results"]] == ["lvtp", "random"]
    assert abs(res["results"][0]["reduction"] - 0.3) <= 0.03
    md = (tmp_path / "out" / "r.md").read_text()
    assert md == markdown_table(res)
    png = (tmp_path / "out" / "r.png").read_bytes()
    assert png[:8] == PNG_SIGNATURE and len(png) > 10_000
    with Image.open(tmp_path / "out" / "r.png") as im:
        assert im.size[0] > 500 and im.size[1] > 200
    out = capsys.readouterr().out
    assert "| lvtp |" in out and "| random |" in out and "wrote" in out


def test_cli_eval_methods_with_semicolons(data_dir, model_path, tmp_path):
    rc = cli.main(["eval", "--data", data_dir, "--model", model_path, "--limit", "1", "--reductions", "0.2",
                   "--methods", "lvtp:alpha=0.3,entropy_mode=high;evit", "--json", str(tmp_path / "r.json"),
                   "--plot", str(tmp_path / "p.png"), "--no-progress"])
    assert rc == 0
    res = json.loads((tmp_path / "r.json").read_text())
    assert [r["method"] for r in res["results"]] == ["lvtp:alpha=0.3,entropy_mode=high", "evit"]
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG_SIGNATURE
    assert not (tmp_path / "r.png").exists()


def test_cli_eval_missing_split_file(data_dir, model_path, capsys):
    assert cli.main(["eval", "--data", data_dir, "--split", "test", "--model", model_path]) == 2
    err = capsys.readouterr().err
    assert "has no test.txt" in err


def test_cli_eval_missing_model(data_dir, tmp_path, capsys):
    assert cli.main(["eval", "--data", data_dir, "--model", str(tmp_path / "nope.pt"), "--no-progress"]) == 2
    assert "nope.pt" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--reductions", "1.5"], "reductions must be in [0, 1)"),
    (["--reductions", "0.2,x"], "comma-separated numbers"),
    (["--methods", "lvtp,bogus"], "unknown method 'bogus'"),
    (["--limit", "0"], "positive integer"),
])
def test_cli_eval_bad_arguments_exit_2(data_dir, model_path, capsys, args, message):
    with pytest.raises(SystemExit) as ei:
        cli.main(["eval", "--data", data_dir, "--model", model_path] + args)
    assert ei.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_eval_unreachable_reduction_is_a_clean_error(data_dir, model_path, capsys):
    assert cli.main(["eval", "--data", data_dir, "--model", model_path, "--limit", "1", "--reductions", "0.9",
                     "--methods", "lvtp", "--no-progress"]) == 2
    assert "0.9" in capsys.readouterr().err


# --------------------------------------------------------------------------- lvtp train-reference
def _train_args(data_dir, out, epochs, *extra):
    return ["train-reference", "--data", data_dir, "--out", str(out), "--epochs", str(epochs), "--limit", "2",
            "--batch", "2", "--size", TRAIN_SIZE, "--no-progress", *extra]


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """`lvtp train-reference` for 2 epochs, then resumed to 3 (one run of each)."""
    out = tmp_path_factory.mktemp("train")
    rc2 = cli.main(_train_args(data_dir, out, 2, "--eval-every", "1"))
    log2 = read_log(str(out / "log.jsonl"))
    files2 = sorted(os.listdir(out))
    rc3 = cli.main(_train_args(data_dir, out, 3, "--eval-every", "1"))
    log3 = read_log(str(out / "log.jsonl"))
    return dict(out=out, rc2=rc2, log2=log2, files2=files2, rc3=rc3, log3=log3)


def test_cli_train_reference_writes_log_and_checkpoints(trained):
    assert trained["rc2"] == 0
    assert {"log.jsonl", "last.pt", "model.safetensors", "model.json"} <= set(trained["files2"])
    log = trained["log2"]
    assert [r["epoch"] for r in log] == [1, 2]
    for r in log:
        assert math.isfinite(r["loss"]) and r["loss"] > 0.5  # cross-entropy over 11 classes, barely trained
        assert 0.0 <= r["val_miou"] <= 100.0
    assert "val_per_class" in log[-1] and "val_per_class" not in log[0]


def test_cli_train_reference_resumes(trained):
    assert trained["rc3"] == 0
    log2, log3 = trained["log2"], trained["log3"]
    assert len(log3) == len(log2) + 1
    assert log3[:2] == log2
    assert log3[2]["epoch"] == 3 and "val_miou" in log3[2]
    ck = torch.load(trained["out"] / "last.pt", map_location="cpu", weights_only=False)
    assert ck["epoch"] == 3 and ck["hp"]["epochs"] == 3


def test_model_safetensors_loads_as_reference_with_fp16_weights(trained):
    from safetensors import safe_open

    out = trained["out"]
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
        saved_sd = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["format"] == "lvtp-reference-v2"
    config = json.loads(meta["config"])
    assert config["stem"] == "conv" and config["img_size"] == [64, 96]
    assert json.loads(meta["meta"])["train"]["epoch"] == 3
    side = json.loads((out / "model.json").read_text())
    assert side["config"] == config and side["meta"]["train"]["epoch"] == 3
    last = torch.load(out / "last.pt", map_location="cpu", weights_only=False)["model"]
    assert saved_sd.keys() == last.keys()
    for k, v in last.items():
        saved = saved_sd[k]
        if v.is_floating_point():
            assert saved.dtype == torch.float16 and torch.equal(saved, v.half()), k
        else:
            assert torch.equal(saved, v), k

    ref = load_reference(str(out / "model.safetensors"))
    trained_model = load_checkpoint(str(out / "last.pt"))  # the fp32 weights of the same epoch
    assert not ref.training and ref.cfg.img_size == (64, 96) and ref._lvtp_source == "model.safetensors"
    by_folder = load_reference(str(out))  # a folder holding model.safetensors
    assert all(torch.equal(p, q) for p, q in zip(ref.state_dict().values(), by_folder.state_dict().values()))
    assert next(ref.parameters()).dtype == torch.float32
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ref(x), trained_model(x)
    scale = float(b.abs().max())
    assert float((a - b).abs().max()) <= 5e-3 * scale + 1e-4
    assert not torch.equal(a, b)  # the weights really were rounded


def test_cli_train_reference_is_deterministic(data_dir, tmp_path, capsys):
    logs = []
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert cli.main(_train_args(data_dir, tmp_path / name, 1, "--seed", seed)) == 0
        logs.append(read_log(str(tmp_path / name / "log.jsonl")))
    assert [len(x) for x in logs] == [1, 1, 1]
    assert logs[0][0]["loss"] == logs[1][0]["loss"]
    assert logs[0][0]["val_miou"] == logs[1][0]["val_miou"]
    assert logs[0][0]["loss"] != logs[2][0]["loss"]
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line)["epoch"] == 1


def test_train_reference_interrupted_resume_is_exact(data_dir, tmp_path):
    kw = dict(epochs=3, batch_size=2, img_size=(64, 96), eval_every=10, limit=2, progress=False)
    full = train_reference(data_dir, str(tmp_path / "full"), log=lambda s: None, **kw)

    class Stop(Exception):
        pass

    def stop_at_epoch_3(msg):
        if '"epoch": 3' in msg:
            raise Stop

    with pytest.raises(Stop):
        train_reference(data_dir, str(tmp_path / "cut"), log=stop_at_epoch_3, **kw)
    assert len(read_log(str(tmp_path / "cut" / "log.jsonl"))) == 2
    msgs = []
    resumed = train_reference(data_dir, str(tmp_path / "cut"), log=msgs.append, **kw)
    assert any("resumed from" in m and "after epoch 2" in m for m in msgs)
    assert not any("different settings" in m for m in msgs)
    assert resumed["loss"] == full["loss"] and resumed["val_miou"] == full["val_miou"]
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_train_reference_missing_train_list(tmp_path, capsys):
    assert cli.main(["train-reference", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "has no train.txt" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_train_reference_with_fewer_images_than_batch_trains(data_dir, tmp_path):
    rec = train_reference(data_dir, str(tmp_path / "o"), epochs=1, batch_size=8, img_size=(64, 96), limit=2,
                          progress=False, log=lambda s: None)
    assert rec["loss"] > 0.0


def test_lr_at_warmup_then_cosine():
    assert lr_at(0, 100, 10, 1.0, 0.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0, 0.0) == pytest.approx(1.0)
    assert lr_at(10, 100, 10, 1.0, 0.01) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0, 0.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, 1.0, 0.01) == pytest.approx(0.01)
    assert lr_at(500, 100, 10, 1.0, 0.01) == pytest.approx(0.01)
    vals = [lr_at(s, 50, 5, 1e-3, 1e-5) for s in range(50)]
    assert all(a < b for a, b in zip(vals[:5], vals[1:5]))
    assert all(a >= b for a, b in zip(vals[5:], vals[6:]))


# --------------------------------------------------------------------------- conv stem
@pytest.mark.parametrize("hw", [(96, 128), (100, 130), (64, 96)])
def test_conv_stem_flops_match_flop_counter(hw):
    cfg = vit_config("vit_ti", img_size=hw, embed_dim=48, depth=2, num_heads=3, stem="conv")
    stem = ConvStem(cfg).eval()
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        tokens, grid = stem(x)
    assert grid == (hw[0] // 16, hw[1] // 16)
    assert tokens.shape == (1, grid[0] * grid[1], 48)
    counted = lflops.count_flops(stem, x)
    assert counted == pytest.approx(conv_stem_flops(cfg, hw), rel=1e-9)
    assert counted > 0


def test_conv_stem_channels_and_validation():
    cfg = vit_config("vit_ti", embed_dim=48, stem="conv")
    assert conv_stem_channels(cfg) == (8, 12, 24, 48)
    assert conv_stem_channels(vit_config("vit_ti", stem="conv")) == (24, 48, 96, 192)
    with pytest.raises(ValueError, match="power of two"):
        conv_stem_channels(vit_config("vit_ti", patch_size=14, stem="conv"))
    with pytest.raises(ValueError, match="stem"):
        ViTSegmenter(vit_config("vit_ti", embed_dim=48, depth=1, num_heads=3, stem="pixels"))


@pytest.mark.parametrize("hw", [(96, 128), (100, 130)])
def test_conv_stem_model_flops_match_flop_counter(hw):
    m = tiny_model(hw)
    assert isinstance(m.patch_embed, ConvStem)
    shape = m.vit_shape()
    assert shape.stem_flops == conv_stem_flops(m.cfg, hw)
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        counted = lflops.count_flops(m, x)
        assert m(x).shape == (1, 11, *hw)
    assert counted == pytest.approx(vit_flops(shape), rel=0.01)
    # the stem is not charged as a patch conv
    patch_cost = 2.0 * shape.num_patches * 48 * 3 * 16**2
    assert vit_flops(shape) - vit_flops(dataclasses.replace(shape, stem_flops=None)) == pytest.approx(
        conv_stem_flops(m.cfg, hw) - patch_cost)


def test_drop_path():
    x = torch.randn(64, 5, 3)
    assert drop_path(x, 0.0, True) is x
    assert drop_path(x, 0.5, False) is x
    torch.manual_seed(0)
    y = drop_path(x, 0.25, True)
    per_sample = [(y[i] == 0).all().item() or torch.allclose(y[i], x[i] / 0.75) for i in range(64)]
    assert all(per_sample)
    dropped = sum(bool((y[i] == 0).all()) for i in range(64))
    assert 4 <= dropped <= 30  # ~16 of 64 dropped


def test_checkpoints_of_either_format_load_the_same_model(model, model_path, tmp_path):
    """A v1 torch file (weights_only), a safetensors file with its config in the metadata,
    and one whose config is only in a config.json beside it give the same weights."""
    from safetensors.torch import load_file, save_file

    from lvtp_kernels.models.checkpoint import _config_dict

    ref = load_checkpoint(model_path)
    sd = load_file(model_path)
    v1 = tmp_path / "old.pt"
    torch.save({"format": "lvtp-reference-v1", "config": _config_dict(model.cfg), "state_dict": sd}, v1)
    bare = tmp_path / "hub" / "model.safetensors"
    bare.parent.mkdir()
    save_file(sd, str(bare))  # no metadata: the config comes from config.json beside it
    (bare.parent / "config.json").write_text(json.dumps(_config_dict(model.cfg)))
    for other in (load_checkpoint(str(v1)), load_checkpoint(str(bare)), load_checkpoint(str(bare.parent))):
        assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), other.state_dict().values()))


@pytest.mark.parametrize("name,content,match", [
    ("junk.safetensors", b"not a safetensors file", "not a readable safetensors file"),
    ("junk.pt", b"not a pickle", "not a readable checkpoint"),
])
def test_corrupt_checkpoint_names_the_file(tmp_path, name, content, match):
    bad = tmp_path / name
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=match) as info:
        load_checkpoint(str(bad))
    assert name in str(info.value)


def test_safetensors_without_config_names_the_file(model, tmp_path):
    from safetensors.torch import save_file

    bare = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(bare))
    with pytest.raises(ValueError, match="has no lvtp config"):
        load_checkpoint(str(bare))
    with pytest.raises(ValueError, match="export_fp16: path must end in .safetensors"):
        export_fp16(model, model.cfg, str(tmp_path / "w.pt"))


def test_eval_reports_paired_bootstrap_intervals(eval_result):
    b = eval_result["baseline"]
    assert eval_result["bootstrap"]["resamples"] == 1000 and eval_result["bootstrap"]["unit"] == "image"
    assert b["miou_ci"][0] <= b["miou"] <= b["miou_ci"][1]
    for r in eval_result["results"]:
        for key in ("miou_drop", "boundary_miou_drop"):
            lo, hi = r[f"{key}_ci"]
            assert lo <= hi
            assert lo - 1e-9 <= r[key] <= hi + 1e-9 or r[key] == pytest.approx(lo) or r[key] == pytest.approx(hi)
    methods = [r["method"] for r in eval_result["results"]]
    first, others = methods[0], list(dict.fromkeys(methods[1:]))
    paired = eval_result["paired"]
    reds = sorted({r["target_reduction"] for r in eval_result["results"]})
    assert [(p["target_reduction"], p["versus"]) for p in paired] == [(red, o) for red in reds for o in others]
    by = {(r["target_reduction"], r["method"]): r for r in eval_result["results"]}
    for p in paired:
        assert p["method"] == first
        assert p["miou_diff"] == pytest.approx(by[(p["target_reduction"], first)]["miou"]
                                               - by[(p["target_reduction"], p["versus"])]["miou"])
        lo, hi = p["miou_diff_ci"]
        assert p["miou_verdict"] == ("better" if lo > 0 else "worse" if hi < 0 else "no difference")
    md = markdown_table(eval_result)
    assert "bootstrap intervals over images (1000 resamples" in md
    assert md.count(f"| {first} - ") == len(paired)


def test_eval_without_bootstrap_has_no_intervals(data_dir, model):
    res = run_eval(data_dir, "val", model=model, reductions=[0.3], methods=["random"], limit=2, progress=False,
                   log=lambda s: None, bootstrap=0)
    assert "bootstrap" not in res and "miou_ci" not in res["baseline"] and "paired" not in res
    assert "[" not in markdown_table(res).split("\n", 1)[1]  # no interval anywhere in the table


def test_train_reference_on_a_sequence_selection_records_it(data_dir, tmp_path):
    # make_dataset's frames are named train_i / val_i: their "sequences" are train and val
    msgs = []
    rec = train_reference(data_dir, str(tmp_path / "seq"), epochs=1, batch_size=2, img_size=(64, 96), eval_every=1,
                          progress=False, log=msgs.append, train_split="except:val", val_split="seq:val",
                          scale=(0.4, 1.2))
    assert "4 train (except:val) / 3 val (seq:val) images" in msgs[0]
    assert 0.0 <= rec["val_miou"] <= 100.0
    hp = torch.load(tmp_path / "seq" / "last.pt", weights_only=True)["hp"]
    assert hp["train_split"] == "except:val" and hp["val_split"] == "seq:val" and hp["scale"] == [0.4, 1.2]
    with pytest.raises(ValueError, match="scale must be 0 < lo <= hi"):
        train_reference(data_dir, str(tmp_path / "bad"), epochs=1, scale=(1.0, 0.5), log=lambda s: None)


@pytest.mark.parametrize("kw,match", [
    (dict(bootstrap=-1), "bootstrap must be an integer >= 0"),
    (dict(bootstrap=2.5), "bootstrap must be an integer >= 0"),
    (dict(level=1.0), r"level must be in \(0, 1\)"),
])
def test_run_eval_bad_bootstrap_arguments_name_them(data_dir, model, kw, match):
    with pytest.raises(ValueError, match=match):
        run_eval(data_dir, "val", model=model, reductions=[0.3], methods=["random"], limit=1, progress=False,
                 log=lambda s: None, **kw)


@pytest.mark.parametrize("argv,match", [
    (["eval", "--bootstrap", "-3"], "--bootstrap: expected an integer >= 0, got -3"),
    (["train-reference", "--out", "o", "--scale", "1.5,0.5"], "--scale: expected 0 < LO <= HI <= 4, got '1.5,0.5'"),
    (["train-reference", "--out", "o", "--scale", "big"], "--scale: expected LO,HI"),
])
def test_cli_bad_protocol_arguments_name_them(data_dir, capsys, argv, match):
    with pytest.raises(SystemExit) as info:
        cli.main([argv[0], "--data", data_dir, *argv[1:]])
    assert info.value.code == 2
    assert re.search(match, capsys.readouterr().err)


def test_cli_eval_unknown_sequence_is_one_line(data_dir, capsys):
    assert cli.main(["eval", "--data", data_dir, "--split", "seq:nope", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lvtp eval: ") and "unknown sequence(s) ['nope']" in err[0]
