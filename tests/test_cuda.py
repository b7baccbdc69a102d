"""CUDA tensors: every op runs (today through the python_ref fallback) and agrees with the CPU.

Skipped on machines without a GPU; benchmarks/gpu_check.sh runs it on a lent GPU.
"""

import pytest
import torch

import lvtp_kernels
from lvtp_kernels import registry
from lvtp_kernels.models import build_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _inputs(seed=0, b=2, h=3, n=197, c=48):
    g = torch.Generator().manual_seed(seed)
    attn = torch.softmax(torch.randn(b, h, n, n, generator=g) * 3, -1)
    tokens = torch.randn(b, n, c, generator=g)
    edge = torch.rand(b, n, generator=g)
    return attn, tokens, edge


def test_every_op_has_a_cuda_backend():
    for op in registry.op_names():
        assert registry.choose_backend(op, "cuda") in registry.BACKENDS


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_ops_on_cuda_match_cpu(dtype):
    attn, tokens, edge = _inputs()
    ops = torch.ops.lvtp
    cuda = lambda t: t.cuda()  # noqa: E731
    a_lp = attn.to(dtype)
    ent_cpu = ops.tsallis_entropy(a_lp, [0.5, 1.0, 2.0, 3.0])
    ent_gpu = ops.tsallis_entropy(cuda(a_lp), [0.5, 1.0, 2.0, 3.0])
    torch.testing.assert_close(ent_gpu.cpu(), ent_cpu, rtol=1e-4, atol=1e-5)
    q, k, v = (torch.randn(2, 3, 77, 33).to(dtype) for _ in range(3))
    out_c, e_c = ops.attention_entropy(q, k, v, [1.0, 2.0], 0.2)
    out_g, e_g = ops.attention_entropy(cuda(q), cuda(k), cuda(v), [1.0, 2.0], 0.2)
    torch.testing.assert_close(out_g.cpu().float(), out_c.float(), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(e_g.cpu(), e_c, rtol=1e-4, atol=1e-5)
    img = torch.rand(2, 3, 67, 95).to(dtype)
    # cuDNN may run the Sobel convolution in TF32
    torch.testing.assert_close(ops.patch_edge_energy(cuda(img), 16).cpu(), ops.patch_edge_energy(img, 16), rtol=2e-3, atol=2e-3)
    # select computes in fp64: the same inputs give identical discrete outputs on both devices
    t = tokens.to(dtype)
    sel_cpu = ops.select(t, ent_cpu, edge, 0.4, 1, 0.5, "low", 8, 10)
    sel_gpu = ops.select(cuda(t), cuda(ent_cpu), cuda(edge), 0.4, 1, 0.5, "low", 8, 10)
    for a, b in zip(sel_gpu, sel_cpu):
        assert torch.equal(a.cpu(), b)
    # prune recomputes the entropies on each device (fp32 sums in another order): near-ties may move
    cpu_out = ops.prune(t, a_lp, edge, keep_ratio=0.4)
    gpu_out = ops.prune(cuda(t), cuda(a_lp), cuda(edge), keep_ratio=0.4)
    assert gpu_out[1].shape == cpu_out[1].shape
    overlap = [len(set(g.tolist()) & set(c.tolist())) / len(c) for g, c in zip(gpu_out[1].cpu(), cpu_out[1])]
    assert min(overlap) > 0.9
    assert torch.equal(gpu_out[0].cpu(), ops.gather_tokens(t, gpu_out[1].cpu()))
    x = t[:, 1:].float()
    c_cpu, a_cpu = ops.kmeans(x, x[:, :8].clone(), 5)
    c_gpu, a_gpu = ops.kmeans(cuda(x), cuda(x[:, :8].clone()), 5)
    torch.testing.assert_close(c_gpu.cpu(), c_cpu, rtol=1e-5, atol=1e-5)
    assert (a_gpu.cpu() == a_cpu).float().mean() > 0.99


def test_gather_scatter_on_cuda():
    _, tokens, _ = _inputs()
    idx = torch.stack([torch.randperm(197)[:50] for _ in range(2)])
    g = torch.ops.lvtp.gather_tokens(tokens.cuda(), idx.cuda())
    assert torch.equal(g.cpu(), torch.ops.lvtp.gather_tokens(tokens, idx))
    s = torch.ops.lvtp.scatter_tokens(tokens.cuda(), g, idx.cuda())
    assert torch.equal(s.cpu(), tokens)
    with pytest.raises(ValueError, match="idx"):
        torch.ops.lvtp.gather_tokens(tokens.cuda(), idx.cuda() + 197)
    with pytest.raises(ValueError, match="device"):
        torch.ops.lvtp.gather_tokens(tokens.cuda(), idx)


def test_patched_model_on_cuda_matches_cpu(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 convolutions on both devices
    model = build_model("vit_ti", seed=0, img_size=(240, 320))
    x = torch.randn(2, 3, 240, 320, generator=torch.Generator().manual_seed(1))
    lvtp_kernels.patch(model, flops_reduction=0.3, keep_records=True)
    with torch.no_grad():
        ref = model(x)
        rec_cpu = [r.keep_idx for r in lvtp_kernels.last_records(model)]
        model.cuda()
        out = model(x.cuda())
        rec_gpu = [r.keep_idx.cpu() for r in lvtp_kernels.last_records(model)]
    # fp32 sums in another order may move a near-tie: selections overlap, outputs agree
    for g, c in zip(rec_gpu, rec_cpu):
        assert g.shape == c.shape
        for gi, ci in zip(g, c):
            assert len(set(gi.tolist()) & set(ci.tolist())) / len(ci) > 0.9
    assert (out.argmax(1).cpu() == ref.argmax(1)).float().mean() > 0.97
