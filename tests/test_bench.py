"""`lvtp bench e2e` / `lvtp bench ops`: the record's schema, the overhead definition, bad input.

Speed is never asserted here (benchmarks measure it); these tests check that the
benchmark measures what it says: the right token counts, schedules of equal GFLOPs,
a JSON record with every documented field, and clear errors.
"""

import json

import pytest
import torch

from lvtp_kernels.app import bench, cli
from lvtp_kernels.app.baselines import parse_method
from lvtp_kernels.app.evaluate import method_schedule
from lvtp_kernels.models import vit


def _e2e(tmp_path, *extra):
    out = tmp_path / "e2e.json"
    md = tmp_path / "e2e.md"
    rc = cli.main(["bench", "e2e", "--device", "cpu", "--arch", "vit_ti", "--size", "64x96", "--batch", "2",
                   "--reductions", "0.3,0.45", "--repeats", "2", "--warmup", "1", "--max-seconds", "0.5",
                   "--no-ceilings", "--json", str(out), "--md", str(md), *extra])
    assert rc == 0
    return json.loads(out.read_text()), md.read_text()


def test_e2e_record_schema(tmp_path, capsys):
    rec, md = _e2e(tmp_path, "--methods", "lvtp,tome")
    assert set(rec["baseline"]) >= {"ms", "images_per_s", "gflops"}
    assert rec["baseline"]["ms"] > 0 and rec["baseline"]["images_per_s"] == pytest.approx(2 / (rec["baseline"]["ms"] / 1e3))
    assert [(r["method"], r["reduction"]) for r in rec["results"]] == [
        ("lvtp", 0.3), ("lvtp", 0.45), ("tome", 0.3), ("tome", 0.45)]
    for r in rec["results"]:
        assert set(r) >= {"method", "reduction", "ms", "images_per_s", "speedup", "overhead_ms", "baseline_ms"}
        assert r["speedup"] == pytest.approx(r["baseline_ms"] / r["ms"])  # unpruned timed in the same rounds
        assert r["static_ms"] == pytest.approx(r["ms"] - r["overhead_ms"])
        # equal GFLOPs across methods at one reduction (each solved on its own cost model)
        assert r["gflops"] < rec["baseline"]["gflops"]
    by = {(r["method"], r["reduction"]): r["gflops"] for r in rec["results"]}
    assert by[("lvtp", 0.3)] == pytest.approx(by[("tome", 0.3)], rel=0.03)
    assert rec["config"]["tokens"] == 1 + 4 * 6
    assert "| lvtp | 0.30 |" in md and "| unpruned | 0 |" in md
    assert "speedup" in capsys.readouterr().out


def test_e2e_token_counts_match_the_patched_model():
    """The static forward behind overhead_ms runs the token counts LVTP really keeps."""
    import lvtp_kernels

    model = vit.build_model("vit_ti", img_size=(64, 96))
    sched = method_schedule(model, parse_method("lvtp"), 0.45, (64, 96))
    n0 = 1 + 4 * 6
    counts = bench.schedule_counts(model, sched, n0)
    lvtp_kernels.patch(model, schedule=sched, keep_records=True)
    with torch.inference_mode():
        model(torch.rand(2, 3, 64, 96))
    recs = lvtp_kernels.last_records(model)
    assert recs, "the schedule must prune"
    for r in recs:  # tokens entering the stage block, then kept after it
        assert counts[r.layer] == r.x_at_stage.shape[1]
        nxt = counts[r.layer + 1] if r.layer + 1 < len(counts) else None
        if nxt is not None:
            assert nxt == r.keep_idx.shape[1]


def test_static_forward_matches_the_model_without_pruning():
    model = vit.build_model("vit_ti", img_size=(32, 48))
    x = torch.rand(1, 3, 32, 48)
    counts = [model.num_prefix_tokens + 6] * len(model.blocks)
    with torch.inference_mode():
        torch.testing.assert_close(bench.static_forward(model, counts)(x), model(x))


@pytest.mark.parametrize("args, msg", [
    (["--size", "64"], "--size must be HxW"),
    (["--reductions", "0.3,1.5"], "--reductions must be in (0, 1)"),
    (["--batch", "0"], "--batch must be >= 1"),
    (["--classes", "0"], "--classes must be >= 1"),
    (["--device", "cuda"], "no CUDA device"),
    (["--device", "cuda:1"], "--device cuda:1: no CUDA device"),
])
def test_e2e_bad_input(args, msg, capsys):
    if "--device" in args and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    rc = cli.main(["bench", "e2e", "--arch", "vit_ti", "--no-ceilings", *args])
    assert rc == 2
    assert msg in capsys.readouterr().err


def test_bench_ops_unknown_benchmark(capsys):
    assert cli.main(["bench", "ops", "--only", "bench_nothing"]) == 2
    assert "unknown benchmark 'bench_nothing'" in capsys.readouterr().err


def test_ops_table_normalises_every_benchmark_row():
    rows = [
        {"bench": "tsallis_entropy", "shape": "B=8 H=12 N=1025", "dtype": "float16", "ref_ms": 2.0, "ours_ms": 0.5,
         "speedup": 4.0, "GB/s": 1000.0, "%floor": 25.0},
        {"bench": "kmeans", "n": 1024, "d": 192, "k": 8, "B": 8, "python_ref_ms": 10.0, "ours_ms": 1.0,
         "speedup": 10.0},
        {"bench": "select", "allocation": "ranked", "N": 1025, "C": 768, "k": 8, "B": 8, "ref_ms": 3.0,
         "ours_ms": None, "speedup": None},
    ]
    t = bench.ops_table(rows).splitlines()
    assert len(t) == 2 + 3
    assert "| tsallis_entropy | B=8 H=12 N=1025 | float16 | 2.000 | 0.500 | 4.00x | 1000 | 25 |" == t[2]
    assert t[3].startswith("| kmeans | B=8 n=1024 d=192 k=8 | float32 | 10.000 | 1.000 | 10.00x |")
    assert "allocation=ranked" in t[4] and "| - |" in t[4]


def test_bench_head_times_the_model_layout(tmp_path, monkeypatch):
    """benchmarks/bench_head.py: the 'reference' column is the decoder's own channels-last
    logits (what the model runs), 'ours' the NCHW copy; both give the same map."""
    from benchmarks import bench_head
    from lvtp_kernels.app import microbench
    from lvtp_kernels.models.vit import LinearDecoder

    import torch.nn.functional as F

    logits = bench_head._nhwc_logits(2, 5, 3, 4, torch.float32, torch.device("cpu"))
    seen = []
    real = F.interpolate

    def spy(x, *a, **kw):
        seen.append(x.stride())
        return real(x, *a, **kw)

    monkeypatch.setattr(F, "interpolate", spy)  # the decoder calls it through the module attribute
    LinearDecoder(8, 5)(torch.randn(2, 12, 8), (3, 4), (48, 64))
    monkeypatch.undo()
    assert seen == [logits.stride()]  # the benchmark builds the decoder's own layout
    assert logits.is_contiguous(memory_format=torch.channels_last)
    monkeypatch.setenv(microbench.ROWS_ENV, str(tmp_path / "rows.jsonl"))
    assert bench_head.main(["--quick", "--repeats", "2", "--csv", str(tmp_path / "b.csv")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["bench"] == "bench_head"
    r = rows[0]
    assert r["ref_ms"] > 0 and r["ours_ms"] > 0 and r["speedup"] == pytest.approx(r["ref_ms"] / r["ours_ms"])
    assert "240x320" in r["shape"] and "bench_head" in (tmp_path / "b.csv").read_text()


def test_e2e_breakdown_parts(tmp_path):
    """--breakdown: every LVTP row gets each overhead part's time per forward, one
    selection/entropy call per stage, and parts that fit inside the profiled forward."""
    rec, md = _e2e(tmp_path, "--methods", "lvtp,tome", "--breakdown")
    lv = [r for r in rec["results"] if r["method"] == "lvtp"]
    assert lv and all("parts_ms" not in r for r in rec["results"] if r["method"] == "tome")
    for r in lv:
        parts, calls = r["parts_ms"], r["calls_per_forward"]
        assert set(parts) == {"entropy_attention", "edge", "selection", "gather_scatter", "reconstruction"}
        stages = sum(1 for _, keep in r["schedule"] if keep < 1.0)
        assert calls["selection"] == stages and calls["entropy_attention"] == stages and calls["edge"] == 1
        assert all(v > 0 for v in parts.values()), parts
        assert sum(parts.values()) <= r["profiled_ms"] * 1.02, (parts, r["profiled_ms"])
    assert "overhead parts per forward" in md and "| entropy_attention | edge | selection |" in md


def test_bench_ops_runs_the_benchmark_scripts_as_processes(tmp_path):
    """`lvtp bench ops --only bench_edge --quick`: the package runs benchmarks/bench_edge.py
    as its own process (it never imports benchmarks/) and reads its rows back."""
    rows = bench.run_ops(quick=True, only=["bench_edge"], log=print)
    assert rows and all(r["bench"] == "patch_edge_energy" for r in rows)
    assert all(r["ref_ms"] > 0 for r in rows)
    table = bench.ops_table(rows)
    assert "| patch_edge_energy | B=1 64x64 patch=16 |" in table
    with pytest.raises(ValueError, match="bench_nope"):
        bench.run_ops(only=["bench_nope"])


def test_gpu_targets_judge_pass_fail_and_missing_rows(tmp_path):
    # benchmarks/gpu_targets.py on a synthetic check JSON: each target PASS or FAIL by its
    # rule, n/a where its rows are missing, and a non-zero exit when any target fails
    from benchmarks import gpu_targets

    def row(method, red, ms, base=10.0, static=None):
        static = ms * 0.99 if static is None else static
        return {"method": method, "reduction": red, "ms": ms, "baseline_ms": base, "speedup": base / ms,
                "static_ms": static, "overhead_ms": ms - static}

    def rec(arch, batch, results, graphs="auto"):
        return {"config": {"arch": arch, "batch": batch, "graphs": graphs, "device_name": "fake", "date": "x"},
                "results": results}

    good = [rec("vit_b", 8, [row("lvtp", 0.3, 7.5), row("lvtp", 0.45, 6.2), row("tome", 0.3, 8.0),
                             row("tome", 0.45, 7.0)]),
            rec("vit_b", 8, [row("lvtp", 0.3, 7.8), row("lvtp", 0.45, 6.5)], graphs="off"),
            rec("vit_b", 1, [row("lvtp", 0.3, 8.2)])]
    res = {t: v for t, _, v in gpu_targets.evaluate(good)}
    assert res["ViT-B b8 speedup at 30% >= 1.3x"] == "PASS" and res["ViT-B b8 speedup at 45% >= 1.55x"] == "PASS"
    assert res["ViT-L at 30%: speedup >= ViT-B b8's"] == "n/a"
    assert "FAIL" not in res.values()
    bad = [rec("vit_b", 8, [row("lvtp", 0.3, 9.0, static=7.0), row("tome", 0.3, 8.0)])]
    res = {t: v for t, _, v in gpu_targets.evaluate(bad)}
    assert res["ViT-B b8 speedup at 30% >= 1.3x"] == "FAIL"
    assert res["ViT-B b8 at 30%: overhead <= 3 % of the unpruned forward"] == "FAIL"
    assert res["ViT-B b8 at 30%: faster than ToMe (ToMe ms / LVTP ms > 1)"] == "FAIL"
    p = tmp_path / "e2e.json"
    p.write_text(json.dumps(bad))
    assert gpu_targets.main([str(p), "--md", str(tmp_path / "t.md")]) == 1
    assert "FAIL" in (tmp_path / "t.md").read_text()
