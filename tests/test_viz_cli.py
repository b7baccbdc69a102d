"""`lvtp viz`: one PNG with the image, edge energy, fused score, tokens per stage and predictions."""

import argparse

import pytest
from PIL import Image

from lvtp_kernels.viz import VIZ_COLUMNS, add_viz_parser, run_viz

PHOTO = "camvid_val_0016E5_07959"


def parse(argv):
    parser = argparse.ArgumentParser(prog="lvtp")
    add_viz_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def expected_size(panels, h, w, pad=6, title_h=18):
    rows = (panels + VIZ_COLUMNS - 1) // VIZ_COLUMNS
    return VIZ_COLUMNS * (w + pad) + pad, rows * (h + title_h + pad) + pad


def test_viz_writes_the_figure(tmp_path):
    from lvtp_kernels.cli import ASSETS
    from lvtp_kernels.models import load_reference

    out = tmp_path / "fig" / "viz.png"
    args = parse(["viz", str(ASSETS / f"{PHOTO}.png"), "--reduction", "0.3", "--out", str(out)])
    assert args.func is run_viz
    assert args.func(args) == 0
    h, w = load_reference().cfg.img_size
    with Image.open(out) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        # image, edge, fused score, 3 stages, fates, 2 predictions
        assert img.size == expected_size(9, h, w)
        img.load()


def test_viz_without_pruning_and_bad_inputs(tmp_path, capsys):
    from lvtp_kernels.cli import ASSETS
    from lvtp_kernels.models import load_reference

    out = tmp_path / "none.png"
    assert run_viz(parse(["viz", str(ASSETS / f"{PHOTO}.png"), "--reduction", "0", "--out", str(out)])) == 0
    h, w = load_reference().cfg.img_size
    with Image.open(out) as img:
        assert img.size == expected_size(6, h, w)
    assert run_viz(parse(["viz", str(tmp_path / "missing.png"), "--out", str(out)])) == 2
    assert "not found" in capsys.readouterr().err
    assert run_viz(parse(["viz", str(ASSETS / f"{PHOTO}.png"), "--model", "no_such_model", "--out", str(out)])) == 2
    with pytest.raises(SystemExit):
        parse(["viz", "x.png", "--reduction", "1.5", "--out", "y.png"])
