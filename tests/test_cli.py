"""The `lvtp` command line."""

import json
import subprocess
import sys

import pytest
import torch

from lvtp_kernels import registry
from lvtp_kernels.app import cli


def test_info_lists_every_op_and_backend(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "LVTP_IMPL=auto" in out
    for op in registry.op_names():
        assert op in out


def test_info_json_reports_chosen_backend_and_reasons(capsys, monkeypatch):
    monkeypatch.setenv("LVTP_IMPL", "ref")
    assert cli.main(["info", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["LVTP_IMPL"] == "ref"
    assert [row["op"] for row in d["ops"]] == list(registry.op_names())
    for row in d["ops"]:
        assert row["chosen"]["cpu"] == "ref"
        assert set(row["backends"]) == set(registry.BACKENDS)
        assert row["backends"]["ref"].startswith("on")
        assert all(s.startswith(("on", "off: ")) for s in row["backends"].values())


def test_info_reports_invalid_lvtp_impl(capsys, monkeypatch):
    monkeypatch.setenv("LVTP_IMPL", "fastest")
    assert cli.main(["info"]) == 0
    assert "invalid" in capsys.readouterr().out


def test_demo_prints_stages_flops_and_time(capsys):
    assert cli.main(["demo", "--arch", "vit_ti", "--size", "96x128", "--repeats", "1", "--reduction", "0.3", "--out", ""]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    stage_rows = [ln for ln in lines if ln[:1].isdigit()]
    assert len(stage_rows) == 3  # stages after blocks 3, 6, 9
    tokens_in = [int(r.split()[3]) for r in stage_rows]
    tokens_kept = [int(r.split()[4]) for r in stage_rows]
    assert tokens_in[0] == 6 * 8 and tokens_in[1:] == tokens_kept[:-1]
    assert all(k < n for k, n in zip(tokens_kept, tokens_in))
    cut = next(ln for ln in lines if ln.startswith("GFLOPs cut"))
    achieved = float(cut.split()[2].rstrip("%")) / 100
    assert abs(achieved - 0.3) <= 0.02
    assert "unpruned" in out and "ms (median)" in out and "ms min-max" in out


def _timing_rows(out):
    """{name: (median, min, max, q1, q3)} of the demo's timing block."""
    import re

    rows = {}
    for ln in out.splitlines():
        m = re.match(r"^  (unpruned|LVTP \d+% target)\s+([\d.]+) ms \[([\d.]+)-([\d.]+)\] \(IQR ([\d.]+)-([\d.]+)\)$", ln)
        if m:
            rows[m.group(1)] = tuple(float(v) for v in m.groups()[1:])
    return rows


def test_demo_times_interleaved_rounds_and_reports_median_and_spread(capsys):
    import re

    assert cli.main(["demo", "--arch", "vit_ti", "--size", "64x96", "--rounds", "4", "--batch", "1",
                     "--reduction", "0.3", "--out", ""]) == 0
    out = capsys.readouterr().out
    assert "time per forward over 4 interleaved round(s) after a warm-up: median [min-max]" in out
    rows = _timing_rows(out)
    assert set(rows) == {"unpruned", "LVTP 30% target"}
    for med, lo, hi, q1, q3 in rows.values():
        assert 0 < lo <= q1 <= med <= q3 <= hi
    sp = re.search(r"^speedup ([\d.]+)x median of per-round ratios \(IQR ([\d.]+)-([\d.]+)x, range ([\d.]+)-([\d.]+)x\)$",
                   out, re.M)
    assert sp, out
    med, q1, q3, lo, hi = (float(v) for v in sp.groups())
    assert lo <= q1 <= med <= q3 <= hi
    # the table's median column is the same median
    table = next(ln for ln in out.splitlines() if ln.startswith("unpruned "))
    assert float(table.split()[3]) == pytest.approx(rows["unpruned"][0], abs=0.051)
    verdict = [ln for ln in out.splitlines() if ln.startswith("timings too noisy")]
    assert all("interquartile range" in ln for ln in verdict)  # a noisy verdict says why
    clear_cut = min(abs(q1 - 1.0), abs(q3 - 1.0), abs((q3 - q1) / med - cli.NOISE_IQR)) > 0.02
    if clear_cut:  # away from the thresholds the printed numbers decide the verdict
        assert bool(verdict) == ((q1 < 1.0 < q3) or (q3 - q1) / med > cli.NOISE_IQR)
    # one round: nothing to judge the spread by, and the demo says so
    assert cli.main(["demo", "--arch", "vit_ti", "--size", "64x96", "--rounds", "1", "--batch", "1", "--out", ""]) == 0
    out = capsys.readouterr().out
    assert "timings too noisy to read a speedup on this machine: too few rounds (1)" in out


def test_interleaved_rounds_alternate_the_order():
    calls = []
    times = cli.interleaved_ms({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3,
                               torch.device("cpu"), warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then a b / b a / a b
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}


@pytest.mark.parametrize("base, pruned, noisy", [
    ([10.0, 10.1, 9.9, 10.0, 10.2, 10.0, 9.8], [7.0, 7.1, 7.0, 6.9, 7.1, 7.0, 7.0], None),
    ([10.0, 6.0, 12.0, 7.0, 11.0, 6.5, 10.5], [7.0, 9.0, 7.0, 8.5, 7.0, 8.8, 7.0], "crosses 1.0"),
    ([10.0, 14.0, 10.0, 14.0, 10.0, 14.0, 10.0], [7.0, 7.0, 7.0, 7.0, 7.0, 7.0, 7.0], "spans"),
    ([10.0, 10.0], [7.0, 7.0], "too few rounds (2)"),
])
def test_timing_summary_flags_a_speedup_too_noisy_to_read(base, pruned, noisy):
    s = cli.timing_summary(base, pruned)
    assert s["unpruned"]["median"] == pytest.approx(sorted(base)[len(base) // 2])
    assert s["unpruned"]["min"] == min(base) and s["unpruned"]["max"] == max(base)
    ratios = sorted(b / p for b, p in zip(base, pruned))
    assert s["speedup"]["median"] == pytest.approx(ratios[len(ratios) // 2] if len(ratios) % 2
                                                   else (ratios[0] + ratios[1]) / 2)
    if noisy is None:
        assert s["noisy"] is None
        assert not any("too noisy" in ln for ln in cli.format_timing(s, "LVTP"))
    else:
        assert noisy in s["noisy"]
        assert any(ln.startswith("timings too noisy to read a speedup on this machine") for ln in cli.format_timing(s, "LVTP"))


def test_version_prints_package_and_torch_versions(capsys):
    import lvtp_kernels

    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"lvtp {lvtp_kernels.__version__} ") and f"torch {torch.__version__}" in out


def test_demo_missing_image_is_a_clear_error(capsys, tmp_path):
    assert cli.main(["demo", "--image", str(tmp_path / "nope.png")]) == 2
    assert "not found" in capsys.readouterr().err


def test_console_script_entry_point_runs():
    res = subprocess.run([sys.executable, "-m", "lvtp_kernels", "info"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "tsallis_entropy" in res.stdout


def test_info_says_when_a_forced_backend_exists_for_no_op(capsys, monkeypatch):
    monkeypatch.setenv("LVTP_IMPL", "cuda")
    assert cli.main(["info"]) == 0
    assert "ops with a cuda backend on cpu: none" in capsys.readouterr().out


def test_forcing_a_backend_no_op_has_warns_once(monkeypatch):
    import warnings

    import pytest
    import torch

    monkeypatch.setenv("LVTP_IMPL", "cuda")  # CPU tensors: no op has a cuda backend for them
    monkeypatch.setattr(registry, "_WARNED_UNUSED", set())
    registry.backend_table()  # a report does not use up the warning
    x, idx = torch.randn(1, 3, 2), torch.tensor([[0]])
    with pytest.warns(UserWarning, match="no lvtp op has a cuda backend"):
        torch.ops.lvtp.gather_tokens(x, idx)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.ops.lvtp.gather_tokens(x, idx)  # once is enough


def test_lvtp_console_script_is_installed():
    import shutil
    from pathlib import Path

    exe = Path(sys.executable).parent / "lvtp"
    exe = str(exe) if exe.exists() else shutil.which("lvtp")
    if exe is None:
        import pytest

        pytest.skip("the lvtp console script is not installed (package not pip-installed)")
    res = subprocess.run([exe, "info", "--json"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["lvtp_kernels"]


def test_demo_rejects_bad_arguments_without_a_traceback(capsys):
    import pytest

    for argv in (["--batch", "0"], ["--reduction", "1.2"], ["--repeats", "x"], ["--size", "8x8"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(["demo", *argv])
        assert exc.value.code == 2
        assert "error: argument" in capsys.readouterr().err
    # reachable by argparse, out of reach for the schedule solver: a clear message, exit 2
    assert cli.main(["demo", "--arch", "vit_ti", "--reduction", "0.9", "--size", "64x64", "--repeats", "1", "--out", ""]) == 2
    assert "out of reach" in capsys.readouterr().err


def test_demo_runs_the_bundled_reference_model_and_writes_pngs(capsys, tmp_path):
    import numpy as np
    from PIL import Image

    assert cli.main(["demo", "--repeats", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "CamVid reference model" in out
    miou_line = next(ln for ln in out.splitlines() if ln.startswith("mIoU on these 3 labelled"))
    base, pruned = (float(v) for v in miou_line.split(":")[1].split("unpruned")[0:1] + [miou_line.split(",")[1].split()[0]])
    assert base > 40.0 and pruned > 40.0  # a trained model, not random weights
    agree = float(next(ln for ln in out.splitlines() if ln.startswith("GFLOPs cut")).split()[-1].rstrip("%"))
    assert agree > 90.0
    row = next(ln for ln in out.splitlines() if ln.startswith("LVTP 30% target")).split()
    analytic, counted = float(row[3]), float(row[4])
    assert abs(analytic - counted) / counted < 0.005  # the cost model of the patched options
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == 3
    from lvtp_kernels.app.viz import CAMVID_PALETTE

    for p in pngs:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 640 and im.size[1] > 240
            # 2 full rows of 3 panels: image, label, unpruned / LVTP, tokens, legend
            pw, ph = (im.size[0] - 6) // 3 - 6, (im.size[1] - 6) // 2 - 24
            arr = np.asarray(im.convert("RGB"))
        x0, y0 = 6 + 2 * (pw + 6), 6 + (ph + 24) + 18
        legend = {tuple(int(v) for v in px) for px in arr[y0:y0 + ph, x0:x0 + pw].reshape(-1, 3)}
        assert {tuple(int(v) for v in c) for c in CAMVID_PALETTE} <= legend  # every class swatch


def test_demo_small_batch_and_zero_reduction_do_not_crash(capsys, tmp_path):
    assert cli.main(["demo", "--batch", "1", "--repeats", "1", "--out", str(tmp_path / "a")]) == 0
    assert len(list((tmp_path / "a").glob("*.png"))) == 1  # the batch's one photo
    # no label with --image: image, 2 predictions, tokens, legend in one row, no empty cell
    img = str(cli.ASSETS / "camvid_val_0016E5_08027.png")
    assert cli.main(["demo", "--image", img, "--rounds", "1", "--out", str(tmp_path / "c")]) == 0
    from PIL import Image

    with Image.open(tmp_path / "c" / "camvid_val_0016E5_08027_lvtp.png") as im:
        assert im.size == (5 * (320 + 6) + 6, 240 + 18 + 6 + 6)
    assert "mIoU on these 1 labelled" in capsys.readouterr().out
    # no active stage: nothing pruned, the PNGs have no token panel, no traceback
    assert cli.main(["demo", "--reduction", "0", "--repeats", "1", "--out", str(tmp_path / "b")]) == 0
    assert "GFLOPs cut 0.0%" in capsys.readouterr().out
    assert len(list((tmp_path / "b").glob("*.png"))) == 3
