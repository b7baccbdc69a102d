"""Scratch sweep used for the alpha / allocation / reconstruction choices in docs/results.md.

    python benchmarks/camvid_sweep.py MODEL LIMIT REDUCTION "variant,variant,..."

Variants: spec[+mode=high][+alpha=A][+k=K] (the op), strat[...] (proportional allocation
in Python), rand; "/nearest" selects the nearest-token reconstruction; "tome" runs ToMe.
Schedules are solved with the default cost model (model.vit_shape()). Data: $LVTP_DATA
(default ../shared/camvid)."""
import sys, time, json, torch
import torch.nn.functional as F
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__))))
import lvtp_kernels
from lvtp_kernels.models import load_reference
from lvtp_kernels.app.data.camvid import load_split, NUM_CLASSES
from lvtp_kernels.app.data.metrics import ConfusionMatrix, boundary_mask
from lvtp_kernels.app.segment import prepare
from lvtp_kernels import flops as lflops
from python_ref.ops import fused_importance, budget
from python_ref.pipeline import active_stages

torch.set_num_threads(1)
ckpt, limit, red = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
variants = sys.argv[4].split(",")
model = load_reference(ckpt)
samples = load_split(__import__("os").environ.get("LVTP_DATA", "../shared/camvid"), "val", limit)
size = model.cfg.img_size
sched = lflops.schedule_for_flops(model.vit_shape(size), red)
stages = active_stages(sched, len(model.blocks))
p = 1
QS = [0.5, 1.0, 2.0, 3.0]

def clusters_of(xs, u, k, iters=10):
    m = xs.shape[1]; k = min(k, m)
    f = xs.float(); f = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    order = torch.sort(-u.double(), dim=1, stable=True).indices
    ranks = torch.tensor([(r * m) // k for r in range(k)])
    init = torch.gather(f, 1, order[:, ranks][..., None].expand(-1, -1, f.shape[-1]))
    _, a = torch.ops.lvtp.kmeans(f, init.contiguous(), iters)
    return a, k

def select(var, x, ent, edge, keep_ratio):
    opts = dict(alpha=0.5, mode="low", k=8)
    for part in var.split("+")[1:]:
        key, val = part.split("=")
        opts[key] = float(val) if key == "alpha" else (int(val) if key == "k" else val)
    if var.startswith("rand"):
        b, n, c = x.shape
        g = torch.Generator().manual_seed(n)
        sc = torch.rand(b, n, generator=g); sc[:, :p] = 2
        from lvtp_kernels.app.baselines import topk_split, semantic_clusters
        ki, pi = topk_split(sc, p, budget(n, p, keep_ratio))
        return ki, pi, semantic_clusters(x, sc, p, opts["k"], 10)
    if var.startswith("spec"):
        ki, pi, cid = torch.ops.lvtp.select(x, ent, edge, keep_ratio, p, opts["alpha"], opts["mode"], opts["k"], 10)
        return ki, pi, cid
    u = fused_importance(ent, edge, p, opts["alpha"], opts["mode"])[:, p:]
    b, n, c = x.shape; m = n - p
    K = budget(n, p, keep_ratio)
    a, k = clusters_of(x[:, p:], u, opts["k"])
    keep = torch.zeros(b, m, dtype=torch.bool)
    for i in range(b):
        counts = torch.bincount(a[i], minlength=k).double()
        quota = counts * K / m
        base = quota.floor()
        rem = int(K - base.sum())
        frac = quota - base
        extra = torch.sort(-frac, stable=True).indices[:rem]
        base[extra] += 1
        for cl in range(k):
            mem = (a[i] == cl).nonzero()[:, 0]
            if mem.numel() == 0: continue
            q = int(base[cl])
            o = torch.sort(-u[i, mem].double(), stable=True).indices[:q]
            keep[i, mem[o]] = True
    ar = torch.arange(m)
    ki = torch.stack([torch.cat([torch.arange(p), ar[keep[i]] + p]) for i in range(b)])
    pi = torch.stack([ar[~keep[i]] + p for i in range(b)])
    cid = torch.cat([torch.full((b, p), -1), a], 1).int()
    return ki, pi, cid

def recon(full, recs, mode):
    for (x_s, ki, pi, cid) in reversed(recs):
        if mode == "nearest":
            b, n, c = x_s.shape
            kept_s = torch.gather(x_s, 1, ki[..., None].expand(-1, -1, c))
            pr_s = torch.gather(x_s, 1, pi[..., None].expand(-1, -1, c))
            kn = F.normalize(kept_s[:, p:], dim=-1); pn = F.normalize(pr_s, dim=-1)
            j = (pn @ kn.transpose(1, 2)).argmax(-1) + p
            delta = full - kept_s
            pr = pr_s + torch.gather(delta, 1, j[..., None].expand(-1, -1, c))
            out = torch.empty_like(x_s)
            out.scatter_(1, ki[..., None].expand(-1, -1, c), full)
            out.scatter_(1, pi[..., None].expand(-1, -1, c), pr)
            full = out
        else:
            full = torch.ops.lvtp.reconstruct_stage(full, x_s, ki, pi, cid, 64, mode)
    return full

def forward(var, img):
    sel, _, rmode = var.partition("/")
    rmode = rmode or "residual"
    x, grid = model.embed(img)
    e = torch.ops.lvtp.patch_edge_energy(img, 16)
    edge = torch.cat([e.new_zeros(e.shape[0], p), e], 1)
    recs = []
    for i, blk in enumerate(model.blocks):
        if i not in stages:
            x = blk(x); continue
        x, ent = blk.forward_entropy(x, QS)
        ki, pi, cid = select(sel, x, ent, edge, stages[i])
        recs.append((x, ki, pi, cid))
        x = torch.ops.lvtp.gather_tokens(x, ki)
        edge = torch.gather(edge, 1, ki)
    x = recon(x, recs, rmode)
    x = model.norm(x)
    return model.decoder(x[:, p:], grid, img.shape[-2:])

def score(fn):
    cm, cb = ConfusionMatrix(NUM_CLASSES), ConfusionMatrix(NUM_CLASSES)
    for i in range(0, len(samples), 8):
        ch = samples[i:i+8]
        im = torch.stack([s.image for s in ch]); lb = torch.stack([s.label for s in ch]).long()
        with torch.no_grad():
            lg = fn(prepare(im, size))
        pr = F.interpolate(lg, size=lb.shape[-2:], mode="bilinear", align_corners=False).argmax(1)
        cm.update(pr, lb); cb.update(pr, lb, boundary_mask(lb))
    return cm.miou(), cb.miou()

b0 = score(model)
if "tome" in variants:
    from lvtp_kernels.app.baselines import tome_forward
    s = score(lambda im: tome_forward(model, im, sched))
    print(f"tome {s[0]:.2f} {s[1]:.2f}")
    variants.remove("tome")
print(f"unpruned {b0[0]:.2f} {b0[1]:.2f}", flush=True)
for v in variants:
    t = time.time()
    s = score(lambda im: forward(v, im))
    print(f"{v:<40} red {red} mIoU {s[0]:.2f} ({b0[0]-s[0]:+.2f}) boundary {s[1]:.2f} ({b0[1]-s[1]:+.2f}) {time.time()-t:.0f}s", flush=True)
