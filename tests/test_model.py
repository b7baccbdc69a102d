"""The ViT segmenter and the one-call LVTP patch."""

import pytest
import torch

import lvtp_kernels
from lvtp_kernels.models.patching import SPEC_DEFAULTS
from lvtp_kernels.flops import count_flops, vit_flops
from lvtp_kernels.models import ViTSegmenter, build_model, is_patched, vit_config
from lvtp_kernels.models.patching import reconstruct as fast_reconstruct
from python_ref import pipeline

SIZE = (96, 128)  # 6 x 8 = 48 patch tokens


def small_model(depth=4, **kw):
    return build_model("vit_ti", seed=3, img_size=SIZE, depth=depth, **kw)


def images(batch=2, size=SIZE, seed=0):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def timm_vit_keys(depth):
    """The parameter names of timm's VisionTransformer (class token, no fc_norm)."""
    keys = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    for i in range(depth):
        for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys += [f"blocks.{i}.{part}.weight", f"blocks.{i}.{part}.bias"]
    return keys + ["norm.weight", "norm.bias"]


def test_parameter_names_follow_timm():
    model = small_model(depth=3)
    names = set(model.state_dict())
    assert names - {"decoder.head.weight", "decoder.head.bias"} == set(timm_vit_keys(3))


def test_load_timm_state_dict_resamples_pos_embed_and_drops_head():
    donor = build_model("vit_ti", seed=7, img_size=(224, 224), depth=2)  # 14 x 14 grid
    sd = {k: v for k, v in donor.state_dict().items() if not k.startswith("decoder.")}
    sd["head.weight"] = torch.zeros(1000, 192)
    sd["head.bias"] = torch.zeros(1000)
    model = build_model("vit_ti", seed=0, img_size=SIZE, depth=2)
    model.load_timm_state_dict(sd)
    assert torch.equal(model.blocks[1].mlp.fc2.weight, donor.blocks[1].mlp.fc2.weight)
    assert model.pos_embed.shape == (1, 1 + 6 * 8, 192)
    assert torch.equal(model.pos_embed[:, :1], donor.pos_embed[:, :1])
    del sd["blocks.1.norm2.weight"]
    with pytest.raises(ValueError, match="blocks.1.norm2.weight"):
        model.load_timm_state_dict(sd)


def test_timm_vision_transformer_loads_when_available():
    timm = pytest.importorskip("timm", reason="timm needs torchvision, which does not import beside the CPU torch")
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, depth=2)
    model = build_model("vit_ti", seed=0, img_size=(224, 224), depth=2)
    model.load_timm_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ours = model.norm(model.forward_blocks(model.embed(x)[0], x))
        theirs = ref.forward_features(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_output_shape_and_other_input_size():
    model = small_model()
    with torch.no_grad():
        assert model(images()).shape == (2, 11, *SIZE)
        assert model(images(1, (64, 80))).shape == (1, 11, 64, 80)


@pytest.mark.parametrize("how", ["schedule", "reduction0"])
def test_keep_ratio_one_is_bitwise_identical(how):
    model = small_model()
    x = images()
    with torch.no_grad():
        before = model(x)
        if how == "schedule":
            lvtp_kernels.patch(model, schedule=[(1, 1.0), (2, 1.0)])
        else:
            lvtp_kernels.patch(model, flops_reduction=0.0)
        after = model(x)
    assert is_patched(model)
    assert torch.equal(before, after)


def test_patch_unpatch_round_trip_touches_no_weight():
    model = small_model()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    x = images()
    with torch.no_grad():
        before = model(x)
        lvtp_kernels.patch(model, flops_reduction=0.3)
        pruned = model(x)
        assert set(model.state_dict()) == set(sd)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
        lvtp_kernels.unpatch(model)
        after = model(x)
    assert type(model) is ViTSegmenter and not hasattr(model, "_lvtp")
    assert not torch.equal(before, pruned)
    assert torch.equal(before, after)


def test_repatch_replaces_settings():
    model = small_model()
    lvtp_kernels.patch(model, schedule=[(1, 0.5)])
    lvtp_kernels.patch(model, schedule=[(2, 0.25)], clusters=2)
    assert model._lvtp.schedule == [(2, 0.25)] and model._lvtp.stages == {2: 0.25} and model._lvtp.clusters == 2
    assert type(model).__mro__[1] is not type(model)  # patched once, not twice
    assert sum(c.__name__.startswith("LVTP") for c in type(model).__mro__) == 1


def _reference_forward(model, x, schedule, **kw):
    """The same model run through python_ref.pipeline (steps 6-7 reference)."""
    tokens, grid = model.embed(x)
    p = model.num_prefix_tokens
    e = torch.ops.lvtp.patch_edge_energy(x, model.cfg.patch_size)
    edge = torch.cat([e.new_zeros(e.shape[0], p), e], dim=1)
    full, records = pipeline.progressive_forward(
        tokens,
        list(model.blocks),
        schedule,
        block_with_attn=lambda blk, t: blk(t, return_attn=True),
        edge=edge,
        num_protected=p,
        **kw,
    )
    full = model.norm(full)
    return model.decoder(full[:, p:], grid, x.shape[-2:]), records


@pytest.mark.parametrize("mode", ["residual", "frozen"])
def test_patched_model_matches_reference_pipeline(mode):
    model = small_model(depth=6)
    schedule = [(1, 0.6), (3, 0.5), (4, 1.0)]
    x = images(3)
    with torch.no_grad():
        ref, ref_records = _reference_forward(model, x, schedule, reconstruct_mode=mode, clusters=4, iters=5)
        spec = dict(SPEC_DEFAULTS, clusters=4, iters=5, reconstruct=mode)  # the spec's method, as the reference
        lvtp_kernels.patch(model, schedule=schedule, keep_records=True, **spec)
        out = model(x)
    records = lvtp_kernels.last_records(model)
    assert [r.layer for r in records] == [1, 3]
    for a, b in zip(records, ref_records):
        assert torch.equal(a.keep_idx, b.keep_idx)
        assert torch.equal(a.prune_idx, b.prune_idx)
        assert torch.equal(a.cluster_id, b.cluster_id)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_fast_reconstruct_matches_reference_on_random_records():
    model = small_model(depth=5)
    schedule = [(0, 0.7), (2, 0.4), (3, 0.5)]
    x = images(2, seed=5)
    with torch.no_grad():
        tokens, _ = model.embed(x)
        _, records = pipeline.progressive_forward(
            tokens, list(model.blocks), schedule, block_with_attn=lambda blk, t: blk(t, return_attn=True), clusters=3
        )
        final = torch.randn(2, records[-1].keep_idx.shape[1], tokens.shape[-1])
        for mode in ("residual", "frozen"):
            torch.testing.assert_close(
                fast_reconstruct(final, records, mode, clusters=3),
                pipeline.reconstruct(final, records, mode),
                rtol=1e-5,
                atol=1e-6,
            )


def test_token_counts_per_stage():
    model = small_model(depth=6)
    lvtp_kernels.patch(model, schedule=[(1, 0.5), (3, 0.5)], keep_records=True)
    with torch.no_grad():
        model(images(1))
    n0 = 48
    k1 = max(1, int(0.5 * n0 + 0.5))
    k2 = max(1, int(0.5 * k1 + 0.5))
    recs = lvtp_kernels.last_records(model)
    assert [r.x_at_stage.shape[1] for r in recs] == [1 + n0, 1 + k1]
    assert [r.keep_idx.shape[1] for r in recs] == [1 + k1, 1 + k2]


def test_patched_model_with_grad_enabled_warns_and_runs():
    model = small_model()
    lvtp_kernels.patch(model, flops_reduction=0.3)
    with pytest.warns(UserWarning, match="without gradients"):
        out = model(images(1))  # parameters require grad; the pruned blocks run under no_grad
    assert out.shape == (1, 11, *SIZE) and torch.isfinite(out).all()


def test_last_records_needs_keep_records():
    model = small_model()
    with pytest.raises(ValueError, match="not patched"):
        lvtp_kernels.last_records(model)
    lvtp_kernels.patch(model, schedule=[(1, 0.5)])
    with pytest.raises(ValueError, match="keep_records"):
        lvtp_kernels.last_records(model)


def test_patched_model_pickles(tmp_path):
    model = small_model()
    lvtp_kernels.patch(model, schedule=[(1, 0.5), (2, 0.5)])
    x = images(1)
    torch.save(model, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    assert is_patched(loaded) and loaded._lvtp.stages == {1: 0.5, 2: 0.5}
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_schedule_for_flops_takes_model_config_or_model():
    model = small_model(depth=8)
    by_cfg = lvtp_kernels.schedule_for_flops(model.cfg, 0.3)
    by_model = lvtp_kernels.schedule_for_flops(model, 0.3)
    by_shape = lvtp_kernels.schedule_for_flops(model.vit_shape(), 0.3)
    assert by_cfg == by_model == by_shape and [layer for layer, _ in by_cfg] == [2, 4, 6]


@pytest.mark.parametrize("reduction", [None, 0.2, 0.3, 0.45])
def test_analytic_flops_match_flop_counter(reduction):
    model = build_model("vit_ti", seed=0, img_size=(240, 320))
    x = images(1, (240, 320))
    with torch.no_grad():
        schedule = []
        if reduction is not None:
            lvtp_kernels.patch(model, flops_reduction=reduction)
            schedule = model._lvtp.schedule
        counted = count_flops(model, x)
    analytic = vit_flops(model.vit_shape(), schedule)
    assert abs(counted - analytic) / analytic < 0.03
    if reduction is not None:
        achieved = 1 - analytic / vit_flops(model.vit_shape())
        assert abs(achieved - reduction) <= 0.02


def test_flop_counter_sees_sdpa_on_cpu():
    q = torch.randn(1, 2, 10, 8)
    assert count_flops(torch.nn.functional.scaled_dot_product_attention, q, q, q) == 4 * 2 * 10 * 10 * 8


def test_patch_errors_are_clear():
    model = small_model()
    with pytest.raises(TypeError, match="supported"):
        lvtp_kernels.patch(torch.nn.Linear(2, 2), flops_reduction=0.3)
    with pytest.raises(ValueError, match="exactly one"):
        lvtp_kernels.patch(model)
    with pytest.raises(ValueError, match="exactly one"):
        lvtp_kernels.patch(model, flops_reduction=0.3, schedule=[(1, 0.5)])
    with pytest.raises(ValueError, match="layer"):
        lvtp_kernels.patch(model, schedule=[(9, 0.5)])
    with pytest.raises(ValueError, match="keep_ratio"):
        lvtp_kernels.patch(model, schedule=[(1, 0.0)])
    with pytest.raises(ValueError, match="twice"):
        lvtp_kernels.patch(model, schedule=[(1, 0.5), (1, 0.6)])
    with pytest.raises(ValueError, match="reconstruct"):
        lvtp_kernels.patch(model, flops_reduction=0.3, reconstruct="mean")
    with pytest.raises(ValueError, match="reduction"):
        lvtp_kernels.patch(model, flops_reduction=0.95)
    with pytest.raises(ValueError, match="layers="):
        lvtp_kernels.patch(model, schedule=[(1, 0.5)], layers=[1])
    with pytest.raises(ValueError, match="alpha"):
        lvtp_kernels.patch(model, flops_reduction=0.3, alpha=1.5)
    with pytest.raises(ValueError, match="entropy_mode"):
        lvtp_kernels.patch(model, flops_reduction=0.3, entropy_mode="mid")
    with pytest.raises(ValueError, match="qs"):
        lvtp_kernels.patch(model, flops_reduction=0.3, qs=[])
    assert not is_patched(model)


def test_vit_config_rejects_unknown_arch():
    with pytest.raises(ValueError, match="arch"):
        vit_config("vit_xxl")


def test_compiled_patched_model_matches_eager():
    torch._dynamo.reset()
    model = small_model()
    lvtp_kernels.patch(model, schedule=[(1, 0.5), (2, 0.5)], clusters=4, iters=3)
    x = images(2)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


def test_patched_model_never_asks_for_the_attention_map(monkeypatch):
    # Pruning layers get their entropies from lvtp.attention_entropy (fused kernels never
    # materialise N x N); no block is run with return_attn=True.
    from lvtp_kernels.models import vit

    model = small_model(depth=6)
    lvtp_kernels.patch(model, schedule=[(1, 0.5), (3, 0.5)], keep_records=True)
    calls = []
    real = lvtp_kernels.registry.kernels("cpu").attention_entropy  # what the patched forward calls

    def forbid(self, x, return_attn=False):
        assert not return_attn, "a patched model materialised an attention map"
        return orig(self, x, return_attn)

    orig = vit.Attention.forward
    monkeypatch.setattr(vit.Attention, "forward", forbid)
    monkeypatch.setattr(lvtp_kernels.registry.kernels("cpu"), "attention_entropy", lambda *a: calls.append(a[0].shape) or real(*a))
    with torch.no_grad():
        out = model(images(2))
    assert out.shape[-2:] == images(2).shape[-2:]
    assert len(calls) == 2  # one per pruning stage
    assert len(lvtp_kernels.last_records(model)) == 2


def test_patched_model_runs_the_triton_kernels_under_the_interpreter(monkeypatch):
    # LVTP_IMPL=triton on CPU tensors (TRITON_INTERPRET=1): the pruning layers' attention
    # and entropies come from the fused Triton kernel, and the model agrees with the reference.
    from lvtp_kernels import registry

    model = small_model(depth=6)
    x = images(2, seed=3)
    lvtp_kernels.patch(model, schedule=[(1, 0.5), (3, 0.5)], keep_records=True)
    monkeypatch.setenv("LVTP_IMPL", "ref")
    with torch.no_grad():
        want = model(x)
    want_records = lvtp_kernels.last_records(model)
    monkeypatch.setenv("LVTP_IMPL", "triton")
    assert registry.choose_backend("attention_entropy", "cpu") == "triton"
    with torch.no_grad():
        got = model(x)
    for a, b in zip(lvtp_kernels.last_records(model), want_records):
        assert torch.equal(a.keep_idx, b.keep_idx) and torch.equal(a.cluster_id, b.cluster_id)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_reference_model_is_trained_and_prunes_gracefully():
    # the bundled CamVid model: real accuracy on the bundled labelled val photos, and a
    # 30 % pruned forward that keeps nearly every pixel's class
    from lvtp_kernels.app.cli import ASSETS, DEMO_IMAGES
    from lvtp_kernels.app.data.camvid import read_image, read_label
    from lvtp_kernels.app.data.metrics import ConfusionMatrix
    from lvtp_kernels.models import load_reference, reference_info
    from lvtp_kernels.app.segment import predict

    model = load_reference()
    assert model.cfg.stem == "conv" and model.cfg.num_classes == 11 and not model.training
    meta = reference_info()["meta"]
    assert meta["train"]["val_miou"] > 50.0
    images = torch.stack([read_image(str(ASSETS / f"{n}.png")) for n in DEMO_IMAGES])
    labels = torch.stack([read_label(str(ASSETS / f"{n}_label.png")) for n in DEMO_IMAGES]).long()
    base = predict(model, images, model.cfg.img_size, tuple(labels.shape[-2:]))
    cm = ConfusionMatrix(11)
    cm.update(base, labels)
    assert cm.miou() > 45.0 and cm.pixel_acc() > 85.0
    lvtp_kernels.patch(model, flops_reduction=0.3)
    pruned = predict(model, images, model.cfg.img_size, tuple(labels.shape[-2:]))
    assert (pruned == base).float().mean() > 0.95


def test_reference_model_loads_by_name_and_rejects_unknown_names():
    from lvtp_kernels.models import load_reference
    from lvtp_kernels.models.reference import bundled_models

    assert bundled_models() == ["camvid_vit_ti_convstem"]
    a, b = load_reference("camvid_vit_ti_convstem"), load_reference()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="camvid_vit_ti_convstem"):
        load_reference("no_such_model")
