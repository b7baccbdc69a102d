"""The tile table of the Triton attention_entropy kernel and its tuner
(benchmarks/tune_attention.py): forced configs compute the same thing, the table is
looked up by card, dtype class, head dim and N bucket, and the tuner writes it."""

import json

import pytest
import torch

from benchmarks import tune_attention as tune
from lvtp_kernels.ops import attention_triton as attn
from python_ref import ops as ref

QS = [0.5, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("config", [(16, 16, 4, 1), (32, 64, 4, 2), (64, 16, 8, 3)])
def test_forced_config_matches_reference(config):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 50, 16, generator=g) for _ in range(3))
    out, ent = attn.attention_entropy(q, k, v, QS, 0.25, config=config)
    r_out, r_ent = ref.attention_entropy(q, k, v, QS, 0.25)
    torch.testing.assert_close(out, r_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, r_ent, rtol=0, atol=1e-5)


@pytest.mark.parametrize("config", [(8, 16, 4, 1), (16, 24, 4, 1), (16, 16, 3, 1), (16, 16, 4, 0), (16, 16, 4),
                                    (16.0, 16, 4, 1), (16, 16, True, 1), (1024, 16, 4, 1), (16, 16, 4, 9), 5, "abcd"])
def test_bad_config_names_it(config):
    q = torch.randn(1, 1, 4, 16)
    with pytest.raises(ValueError, match=r"bad config"):
        attn.attention_entropy(q, q, q, QS, 0.25, config=config)


def _table(tmp_path, entries):
    p = tmp_path / "tuned.json"
    p.write_text(json.dumps({"version": 1, "entries": entries}))
    attn._tuned_entries.cache_clear()
    return str(p)


def test_tuned_lookup(tmp_path):
    e = {"device": "Fake GPU", "dtype": "16bit", "block_d": 64, "block_dv": 64, "np2": 2048, "config": [64, 128, 8, 2]}
    path = _table(tmp_path, [e, dict(e, np2=32, config=[128, 64, 8, 3])])
    look = lambda dev, dt, n, bd=64: attn.tuned_config(dev, dt, n, bd, bd, path=path)  # noqa: E731
    assert look("Fake GPU", torch.float16, 1025) == (64, 128, 8, 2)
    assert look("Fake GPU", torch.bfloat16, 2048) == (64, 128, 8, 2)  # one entry serves both 16-bit types
    assert look("Fake GPU", torch.float16, 20) == (32, 32, 8, 3)  # blocks capped at the bucket
    assert look("Fake GPU", torch.float32, 1025) is None
    assert look("Fake GPU", torch.float16, 2049) is None
    assert look("Fake GPU", torch.float16, 1025, bd=128) is None
    assert look("Other GPU", torch.float16, 1025) is None
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert attn.tuned_config("Fake GPU", torch.float16, 1025, 64, 64, path=str(bad)) is None
    assert attn.tuned_config("Fake GPU", torch.float16, 1025, 64, 64, path=str(tmp_path / "none.json")) is None


@pytest.mark.parametrize("content", [
    "[1, 2]", '{"entries": null}', '{"entries": [5, "x"]}',
    '{"entries": [{"device": "Fake GPU", "dtype": "16bit", "block_d": 64, "block_dv": 64, "np2": 2048, "config": 5}]}',
    '{"entries": [{"device": "Fake GPU", "dtype": "16bit", "block_d": 64, "block_dv": 64, "np2": 2048, '
    '"config": ["a", 1, 1, 1]}]}',
    '{"entries": [{"device": "Fake GPU", "dtype": "16bit", "block_d": 64, "block_dv": 64, "np2": 2048, '
    '"config": [8, 24, 3, 0]}]}',
    '{"entries": [{"device": "Fake GPU", "dtype": "16bit", "block_d": "64", "block_dv": 64, "np2": 2048, '
    '"config": [64, 64, 4, 2]}]}',
])
def test_malformed_tables_are_ignored(tmp_path, content):
    """A bad table never breaks the op: the entry is skipped and the heuristic runs."""
    p = tmp_path / "t.json"
    p.write_text(content)
    attn._tuned_entries.cache_clear()
    assert attn.tuned_config("Fake GPU", torch.float16, 1025, 64, 64, path=str(p)) is None
    good = {"device": "Fake GPU", "dtype": "16bit", "block_d": 64, "block_dv": 64, "np2": 2048, "config": [64, 32, 4, 2]}
    try:
        data = json.loads(content)
    except ValueError:
        return
    if isinstance(data, dict) and isinstance(data.get("entries"), list):
        p.write_text(json.dumps({"entries": data["entries"] + [good]}))
        attn._tuned_entries.cache_clear()
        assert attn.tuned_config("Fake GPU", torch.float16, 1025, 64, 64, path=str(p)) == (64, 32, 4, 2)


def test_resolve_config_prefers_forced_then_table_then_heuristic(tmp_path, monkeypatch):
    e = {"device": "Fake GPU", "dtype": "16bit", "block_d": 64, "block_dv": 64, "np2": 2048, "config": [64, 128, 4, 2]}
    path = _table(tmp_path, [e])
    monkeypatch.setattr(attn, "TUNED_PATH", path)
    monkeypatch.setattr(attn, "interpreting", lambda: False)  # as on a GPU (the lookup is for compiled code)
    monkeypatch.setattr(attn, "gpu_family", lambda index: "Fake GPU")
    cuda = torch.device("cuda", 0)
    heuristic = attn._launch_config(1025, 64, 64, False)
    assert heuristic != (64, 128, 4, 2)
    assert attn.resolve_config(cuda, torch.float16, 1025, 64, 64, False) == (64, 128, 4, 2)
    assert attn.resolve_config(cuda, torch.bfloat16, 1500, 64, 64, False) == (64, 128, 4, 2)
    assert attn.resolve_config(cuda, torch.float16, 1025, 64, 64, False, config=(32, 32, 4, 1)) == (32, 32, 4, 1)
    assert attn.resolve_config(cuda, torch.float16, 4097, 64, 64, False) == attn._launch_config(4097, 64, 64, False)
    assert attn.resolve_config(torch.device("cpu"), torch.float16, 1025, 64, 64, False) == heuristic
    monkeypatch.setattr(attn, "gpu_family", lambda index: "Other GPU")
    assert attn.resolve_config(cuda, torch.float16, 1025, 64, 64, False) == heuristic


def test_package_table_is_valid():
    with open(attn.TUNED_PATH) as f:
        table = json.load(f)
    assert isinstance(table["entries"], list)
    for e in table["entries"]:
        assert attn._valid_entry(e), e  # the launcher would silently skip it


def test_tuner_quick_writes_a_table(tmp_path, capsys):
    path = tmp_path / "table.json"
    other = {"device": "Other", "dtype": "16bit", "block_d": 16, "block_dv": 16, "np2": 64, "config": [16, 16, 4, 1]}
    path.write_text(json.dumps({"version": 1, "entries": [other]}))
    out = tmp_path / "records.json"
    assert tune.main(["--quick", "--repeats", "1", "--json", str(out), "--write", str(path)]) == 0
    recs = json.loads(out.read_text())["records"]
    assert len(recs) == 3 and sum(r["default"] for r in recs) == 1
    assert all("ms" in r and r["ms"] > 0 for r in recs)  # every config agreed with the default's result
    table = json.loads(path.read_text())["entries"]
    assert other in table  # another card's entry is kept
    mine = [e for e in table if e["device"] != "Other"]
    assert len(mine) == 1 and mine[0]["np2"] == 64 and mine[0]["dtype"] == "float32"
    assert tuple(mine[0]["config"]) in {tuple(r["config"]) for r in recs}
    # a second run replaces its own entry instead of adding one
    assert tune.main(["--quick", "--repeats", "1", "--write", str(path)]) == 0
    assert len([e for e in json.loads(path.read_text())["entries"] if e["device"] != "Other"]) == 1


def test_tuner_rejects_a_wrong_config(monkeypatch):
    real = attn.attention_entropy

    def broken(q, k, v, qs, scale, config=None):
        out, ent = real(q, k, v, qs, scale, config=config)
        if config == (32, 16, 4, 1):
            ent = ent + 1e-3  # a tile bug
        return out, ent

    monkeypatch.setattr(attn, "attention_entropy", broken)
    recs = tune.sweep([(1, 2, 50, 16)], [(32, 16, 4, 1)], torch.float32, torch.device("cpu"), 1, log=lambda *_: None)
    bad = [r for r in recs if r["config"] == [32, 16, 4, 1]]
    assert bad and "disagrees" in bad[0]["error"] and "ms" not in bad[0]
    assert tune.best_entries(recs, "cpu", "float32")[0]["config"] != [32, 16, 4, 1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled Triton)")
def test_gpu_configs_agree():
    """Every config of the GPU grid that launches computes what the default config does."""
    recs = tune.sweep([(2, 3, 197, 64)], tune.GPU_CONFIGS, torch.float16, torch.device("cuda"), 2,
                      log=lambda *_: None)
    assert not [r for r in recs if "disagrees" in r.get("error", "")]
    assert sum("ms" in r for r in recs) >= len(recs) // 2


def test_tiles_are_keyed_by_gpu_family_not_card_name(monkeypatch):
    """An H100 and an H200 (both compute capability 9.0) share one table entry."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    attn.gpu_family.cache_clear()
    try:
        assert attn.gpu_family(0) == "sm_90"
    finally:
        attn.gpu_family.cache_clear()
