"""`lvtp viz`: one PNG with the image, edge energy, fused score, tokens per stage, predictions
and a legend."""

import argparse

import numpy as np
import pytest
from PIL import Image

from lvtp_kernels.app import cli
from lvtp_kernels.app.viz import CAMVID_PALETTE, STAGE_COLOURS, add_viz_parser, class_legend, figure_columns, run_viz

PHOTO = "camvid_val_0016E5_07959"
PAD, TITLE_H = 6, 18


def parse(argv):
    parser = argparse.ArgumentParser(prog="lvtp")
    add_viz_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def expected_size(panels, h, w, pad=PAD, title_h=TITLE_H):
    cols = figure_columns(panels)
    rows = (panels + cols - 1) // cols
    return cols * (w + pad) + pad, rows * (h + title_h + pad) + pad


def panel(img, index, h, w, cols):
    """The pixels of panel ``index`` of a ``compose`` figure."""
    r, c = divmod(index, cols)
    x0, y0 = PAD + c * (w + PAD), PAD + r * (h + TITLE_H + PAD) + TITLE_H
    return np.asarray(img)[y0:y0 + h, x0:x0 + w]


def colours_in(arr):
    return {tuple(int(v) for v in px) for px in arr.reshape(-1, 3)}


def test_figure_columns_leave_no_empty_cell_where_they_can():
    assert figure_columns(10) == 5 and figure_columns(8) == 4 and figure_columns(7) == 4
    assert figure_columns(9) == 5  # 1 empty cell instead of 3


def test_class_legend_shows_every_class_colour_and_the_stage_colours():
    leg = class_legend(240, 320, stages=[3, 6, 9], dimmed=True, heat=True)
    assert leg.shape == (240, 320, 3) and leg.dtype == np.uint8
    seen = colours_in(leg)
    assert {tuple(int(v) for v in c) for c in CAMVID_PALETTE} <= seen
    assert {tuple(int(v) for v in c) for c in STAGE_COLOURS[:4]} <= seen
    plain = colours_in(class_legend(240, 320))
    assert tuple(int(v) for v in STAGE_COLOURS[1]) not in plain  # no token entries without stages
    # a small panel still holds every class swatch (more columns)
    assert {tuple(int(v) for v in c) for c in CAMVID_PALETTE} <= colours_in(class_legend(96, 128, stages=[3, 6, 9]))


def test_viz_writes_the_figure_with_a_legend(tmp_path, capsys):
    from lvtp_kernels.app.cli import ASSETS
    from lvtp_kernels.models import load_reference

    out = tmp_path / "fig" / "viz.png"
    args = parse(["viz", str(ASSETS / f"{PHOTO}.png"), "--reduction", "0.3", "--out", str(out)])
    assert args.func is run_viz
    assert cli.main(["viz", str(ASSETS / f"{PHOTO}.png"), "--reduction", "0.3", "--out", str(out)]) == 0
    assert "10 panels" in capsys.readouterr().out
    h, w = load_reference().cfg.img_size
    with Image.open(out) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        # image, edge, fused score, 3 stages, fates, 2 predictions, legend: 2 full rows of 5
        assert img.size == expected_size(10, h, w)
        img.load()
        legend = panel(img, 9, h, w, figure_columns(10))
    seen = colours_in(legend)
    assert {tuple(int(v) for v in c) for c in CAMVID_PALETTE} <= seen
    assert {tuple(int(v) for v in c) for c in STAGE_COLOURS[:4]} <= seen


def test_viz_without_pruning_and_bad_inputs(tmp_path, capsys):
    from lvtp_kernels.app.cli import ASSETS
    from lvtp_kernels.models import load_reference

    out = tmp_path / "none.png"
    assert cli.main(["viz", str(ASSETS / f"{PHOTO}.png"), "--reduction", "0", "--out", str(out)]) == 0
    h, w = load_reference().cfg.img_size
    with Image.open(out) as img:
        assert img.size == expected_size(7, h, w)  # 6 panels and the legend
    capsys.readouterr()
    assert cli.main(["viz", str(tmp_path / "missing.png"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "missing.png" in err
    assert cli.main(["viz", str(ASSETS / f"{PHOTO}.png"), "--model", "no_such_model", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("lvtp viz: --model 'no_such_model'")
    with pytest.raises(SystemExit):
        parse(["viz", "x.png", "--reduction", "1.5", "--out", "y.png"])
