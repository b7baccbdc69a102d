"""Every `lvtp` subcommand turns a bad input into one stderr line `lvtp <cmd>: <problem>` that
names the file or argument, and a non-zero exit (2), never a traceback."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from lvtp_kernels.app import cli

ASSET = str(cli.ASSETS / "camvid_val_0016E5_07959.png")
LABEL = str(cli.ASSETS / "camvid_val_0016E5_07959_label.png")
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture
def bad(tmp_path):
    """Bad inputs of every kind, in ``tmp_path``."""
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_text("this is not a PNG\n")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(open(ASSET, "rb").read()[:3000])
    not_ckpt = tmp_path / "weights.pt"
    not_ckpt.write_text("not a checkpoint")
    dict_ckpt = tmp_path / "dict.pt"
    torch.save({"a": 1}, dict_ckpt)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    no_layout = tmp_path / "no_layout"
    no_layout.mkdir()
    (no_layout / "readme.txt").write_text("no split lists here")
    missing_files = tmp_path / "missing_files"
    missing_files.mkdir()
    for split in ("train", "val"):
        (missing_files / f"{split}.txt").write_text("images/a.png labels/a.png\n")
    bad_line = tmp_path / "bad_line"
    bad_line.mkdir()
    (bad_line / "val.txt").write_text("only_one_field.png\n")
    good = tmp_path / "good"
    good.mkdir()
    for split in ("train", "val"):
        (good / f"{split}.txt").write_text(f"{ASSET} {LABEL}\n")
    return {"dir": tmp_path, "corrupt": str(corrupt), "truncated": str(truncated), "not_ckpt": str(not_ckpt),
            "dict_ckpt": str(dict_ckpt), "file": str(a_file), "no_layout": str(no_layout),
            "missing_files": str(missing_files), "bad_line": str(bad_line), "good": str(good)}


def one_error_line(capsys, argv, cmd, *needles, code=2):
    """Run ``lvtp argv`` in-process: exit ``code``, exactly one stderr line starting with
    ``lvtp <cmd>: `` and containing every needle; returns that line."""
    rc = cli.main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == code, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"lvtp {cmd}: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# --------------------------------------------------------------------------- viz
@pytest.mark.parametrize("case, needles", [
    ("missing", ("nope.png", "not found")),
    ("corrupt", ("corrupt.png", "not an image file")),
    ("truncated", ("truncated.png", "truncated")),
    ("folder", ("is a folder",)),
])
def test_viz_bad_image(bad, capsys, case, needles):
    image = {"missing": str(bad["dir"] / "nope.png"), "folder": str(bad["dir"])}.get(case) or bad[case]
    one_error_line(capsys, ["viz", image, "--out", str(bad["dir"] / "o.png")], "viz", *needles)
    assert not (bad["dir"] / "o.png").exists()


def test_viz_image_that_is_not_rgb_convertible(bad, capsys, monkeypatch):
    from PIL import Image

    def refuse(self, mode=None, *a, **k):
        raise ValueError(f"conversion from {self.mode} to {mode} not supported")

    monkeypatch.setattr(Image.Image, "convert", refuse)
    one_error_line(capsys, ["viz", ASSET, "--out", str(bad["dir"] / "o.png")], "viz",
                   "camvid_val_0016E5_07959.png", "RGB", "not supported")


@pytest.mark.parametrize("which, needles", [
    ("not_ckpt", ("--model", "weights.pt", "checkpoint")),
    ("dict_ckpt", ("--model", "dict.pt", "checkpoint")),
    ("missing", ("--model", "gone.pt")),
])
def test_viz_bad_model(bad, capsys, which, needles):
    model = str(bad["dir"] / "gone.pt") if which == "missing" else bad[which]
    one_error_line(capsys, ["viz", ASSET, "--model", model, "--out", str(bad["dir"] / "o.png")], "viz", *needles)


def test_viz_bad_out(bad, capsys):
    one_error_line(capsys, ["viz", ASSET, "--out", os.path.join(bad["file"], "o.png")], "viz",
                   "--out", "a_file", "not a folder")
    one_error_line(capsys, ["viz", ASSET, "--out", str(bad["dir"])], "viz", "--out", "is a folder")


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only folders")
def test_viz_out_in_a_read_only_folder(bad, capsys):
    ro = bad["dir"] / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        one_error_line(capsys, ["viz", ASSET, "--out", str(ro / "sub" / "o.png")], "viz", "--out", "not writable")
    finally:
        ro.chmod(0o755)


def test_out_in_a_folder_that_cannot_be_created(capsys, tmp_path):
    # /proc refuses new folders even to root; elsewhere a file stands in the way
    parent = "/proc" if os.path.isdir("/proc/self") else os.path.join(str(tmp_path), "f")
    if not os.path.isdir("/proc/self"):
        open(parent, "w").close()
    one_error_line(capsys, ["viz", ASSET, "--out", os.path.join(parent, "lvtp_nope", "o.png")], "viz",
                   "--out", "lvtp_nope")


# --------------------------------------------------------------------------- demo
def test_demo_bad_inputs(bad, capsys):
    one_error_line(capsys, ["demo", "--image", bad["corrupt"], "--out", ""], "demo", "--image", "corrupt.png")
    one_error_line(capsys, ["demo", "--image", str(bad["dir"] / "nope.png"), "--out", ""], "demo", "nope.png",
                   "not found")
    one_error_line(capsys, ["demo", "--model", bad["not_ckpt"], "--out", ""], "demo", "--model", "weights.pt")
    one_error_line(capsys, ["demo", "--out", bad["file"]], "demo", "--out", "a_file", "not a folder")
    one_error_line(capsys, ["demo", "--out", os.path.join(bad["file"], "sub")], "demo", "--out", "not a folder")


def test_demo_device(capsys):
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        one_error_line(capsys, ["demo", "--device", f"cuda:{n}", "--out", ""], "demo", f"--device cuda:{n}",
                       f"only {n} CUDA device")
    else:
        for dev in ("cuda", "cuda:0", "cuda:3"):
            one_error_line(capsys, ["demo", "--device", dev, "--out", ""], "demo", f"--device {dev}",
                           "CUDA is not available")
    with pytest.raises(SystemExit) as exc:  # not a device name at all: argparse's usage error
        cli.main(["demo", "--device", "gpu"])
    assert exc.value.code == 2
    assert "argument --device: expected cpu, cuda or cuda:N" in capsys.readouterr().err


def test_device_names_parse():
    assert cli._device_arg("CUDA:1") == "cuda:1" and cli._device_arg("cpu") == "cpu"
    for bad_name in ("cuda:", "cuda:x", "cpu:0", "tpu", ""):
        with pytest.raises(Exception):
            cli._device_arg(bad_name)
    assert cli.resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("argv, needle", [
    (["demo", "--size", "240"], "argument --size"),
    (["demo", "--size", "99999x320"], "argument --size"),
    (["demo", "--batch", "-1"], "argument --batch"),
    (["demo", "--rounds", "0"], "argument --rounds"),
    (["eval", "--data", ".", "--reductions", "0.2,abc"], "argument --reductions"),
    (["eval", "--data", ".", "--batch", "0"], "argument --batch"),
    (["train-reference", "--data", ".", "--out", "o", "--size", "8x8"], "argument --size"),
    (["train-reference", "--data", ".", "--out", "o", "--lr", "-1"], "argument --lr"),
])
def test_argparse_errors_exit_2_naming_the_argument(capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"lvtp {argv[0]}: error: {needle}")


# --------------------------------------------------------------------------- eval
def test_eval_bad_inputs(bad, capsys):
    one_error_line(capsys, ["eval", "--data", str(bad["dir"] / "absent")], "eval", "--data", "absent", "not found")
    one_error_line(capsys, ["eval", "--data", bad["file"]], "eval", "--data", "a_file", "not a folder")
    one_error_line(capsys, ["eval", "--data", bad["no_layout"]], "eval", "--data", "no_layout", "has no val.txt")
    one_error_line(capsys, ["eval", "--data", bad["missing_files"]], "eval", "--data", "missing", "images/a.png")
    one_error_line(capsys, ["eval", "--data", bad["bad_line"]], "eval", "val.txt:1", "expected 'image label'")
    one_error_line(capsys, ["eval", "--data", bad["good"], "--model", bad["not_ckpt"]], "eval", "--model",
                   "weights.pt")
    one_error_line(capsys, ["eval", "--data", bad["good"], "--json", os.path.join(bad["file"], "r.json")], "eval",
                   "--json", "not a folder")
    one_error_line(capsys, ["eval", "--data", bad["good"], "--plot", str(bad["dir"])], "eval", "--plot",
                   "is a folder")


# --------------------------------------------------------------------------- train-reference
def test_train_reference_bad_inputs(bad, capsys):
    out = bad["dir"] / "o"
    one_error_line(capsys, ["train-reference", "--data", bad["no_layout"], "--out", str(out)], "train-reference",
                   "--data", "has no train.txt")
    one_error_line(capsys, ["train-reference", "--data", bad["missing_files"], "--out", str(out)],
                   "train-reference", "--data", "train.txt lists", "missing")
    one_error_line(capsys, ["train-reference", "--data", bad["good"], "--out", bad["file"]], "train-reference",
                   "--out", "not a folder")
    assert not out.exists()


# --------------------------------------------------------------------------- bench
@pytest.mark.parametrize("args, needles", [
    (["--repeats", "0"], ("--repeats must be >= 1",)),
    (["--threads", "0"], ("--threads must be >= 1",)),
    (["--warmup", "-1"], ("--warmup must be >= 0",)),
    (["--max-seconds", "0"], ("--max-seconds",)),
    (["--json", "PARENT_FILE/r.json"], ("--json", "not a folder")),
    (["--md", "PARENT_FILE/r.md"], ("--md", "not a folder")),
])
def test_bench_e2e_bad_inputs_fail_before_timing(bad, capsys, args, needles):
    args = [a.replace("PARENT_FILE", bad["file"]) for a in args]
    one_error_line(capsys, ["bench", "e2e", "--device", "cpu", "--arch", "vit_ti", "--no-ceilings", *args],
                   "bench e2e", *needles)


def test_bench_ops_bad_md_path(bad, capsys):
    one_error_line(capsys, ["bench", "ops", "--md", os.path.join(bad["file"], "t.md")], "bench ops", "--md")


# --------------------------------------------------------------------------- internal errors, debugging
def test_internal_error_is_one_line_with_a_hint_unless_debugging(capsys, monkeypatch):
    def boom():
        raise RuntimeError("something inside broke\nsecond line")

    monkeypatch.setattr(cli, "info_dict", boom)
    monkeypatch.delenv("LVTP_DEBUG", raising=False)
    line = one_error_line(capsys, ["info"], "info", "internal error: RuntimeError: something inside broke second line",
                          "LVTP_DEBUG=1", code=1)
    assert line.endswith("(set LVTP_DEBUG=1 to see the traceback)")
    monkeypatch.setenv("LVTP_DEBUG", "1")
    with pytest.raises(RuntimeError, match="something inside broke"):
        cli.main(["info"])


def test_debug_shows_the_traceback_of_an_expected_error_too(bad, capsys, monkeypatch):
    monkeypatch.setenv("LVTP_DEBUG", "1")
    assert cli.main(["viz", bad["corrupt"], "--out", str(bad["dir"] / "o.png")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("lvtp viz: image ")


def test_os_errors_name_the_file():
    exc = PermissionError(13, "Permission denied", "/some/file.png")
    assert cli._one_line(exc) == "'/some/file.png': Permission denied"


# --------------------------------------------------------------------------- a real process
@pytest.mark.parametrize("argv, needle", [
    (["viz", "CORRUPT", "--out", "OUT"], "lvtp viz: image 'CORRUPT': not an image file PIL can read"),
    (["demo", "--image", "CORRUPT", "--out", ""], "lvtp demo: --image 'CORRUPT': not an image file PIL can read"),
])
def test_console_process_prints_one_line_and_exits_2(bad, argv, needle):
    argv = [a.replace("CORRUPT", bad["corrupt"]).replace("OUT", str(bad["dir"] / "x.png")) for a in argv]
    env = {k: v for k, v in os.environ.items() if k != "LVTP_DEBUG"}
    exe = shutil.which("lvtp", path=os.path.dirname(sys.executable))
    cmd = [exe] if exe else [sys.executable, "-m", "lvtp_kernels"]
    res = subprocess.run(cmd + argv, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [needle.replace("CORRUPT", bad["corrupt"]) + " (corrupt, or another format)"]
    assert res.stdout == ""
