"""Training of the reference segmentation model on CamVid (``lvtp train-reference``).

No pretrained ViT can be downloaded here, so the package trains its own: the
Segmenter-style ViT-Ti/16 of :mod:`lvtp_kernels.models.vit` with a conv stem, on the
train split, choices made on val. Deterministic for a seed, resumable from
``OUT/last.pt`` (weights and optimiser state, a torch file), one JSON line per epoch in
``OUT/log.jsonl``; at the end ``OUT/model.safetensors`` holds the fp16 weights (config and
final val metrics in its metadata and in ``OUT/model.json``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data.camvid import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, SegSample, augment, load_split, normalize
from .data.metrics import ConfusionMatrix
from ..models.checkpoint import _config_dict, export_fp16
from ..models.vit import ViTSegmenter, vit_config
from .segment import predict

DEFAULTS = dict(
    arch="vit_ti", stem="conv", img_size=(240, 320), epochs=100, batch_size=8, lr=1e-3, min_lr=1e-5, weight_decay=0.05,
    warmup_epochs=3, drop_path=0.1, seed=0, eval_every=5, scale=(0.5, 1.0), jitter=0.25, label_smoothing=0.0,
)


def lr_at(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Linear warm-up, then cosine decay to ``min_lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * min(1.0, t)))


def evaluate_miou(model: ViTSegmenter, samples: Sequence[SegSample], size, batch_size: int = 8) -> Dict[str, object]:
    """Val metrics of the unpruned model: mIoU (void ignored), pixel accuracy, per-class IoU."""
    model.eval()
    cm = ConfusionMatrix(NUM_CLASSES)
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        images = torch.stack([s.image for s in chunk])
        labels = torch.stack([s.label for s in chunk]).long()
        cm.update(predict(model, images, size, tuple(labels.shape[-2:])), labels)
    return {"miou": cm.miou(), "pixel_acc": cm.pixel_acc(), "per_class": cm.per_class(list(CLASS_NAMES))}


def train_reference(
    data_dir: str,
    out_dir: str,
    epochs: int = DEFAULTS["epochs"],
    batch_size: int = DEFAULTS["batch_size"],
    lr: float = DEFAULTS["lr"],
    seed: int = DEFAULTS["seed"],
    arch: str = DEFAULTS["arch"],
    stem: str = DEFAULTS["stem"],
    img_size=DEFAULTS["img_size"],
    eval_every: int = DEFAULTS["eval_every"],
    limit: Optional[int] = None,
    threads: Optional[int] = None,
    bf16: bool = False,
    progress: bool = True,
    log: Optional[Callable[[str], None]] = None,
    train_split: str = "train",
    val_split: str = "val",
    scale: Optional[Sequence[float]] = None,
) -> dict:
    """Train (or resume) the reference model; returns the final record (val metrics included).

    ``train_split`` / ``val_split``: list names or sequence selections
    (``data.camvid.read_pairs``), e.g. ``except:0006R0`` / ``seq:0006R0`` for a model that
    never saw the held-out sequence. ``scale``: the random rescale range of the original
    photo (default ``DEFAULTS["scale"]``)."""
    log = log or logging.getLogger(__name__).info
    if threads:
        torch.set_num_threads(threads)
    os.makedirs(out_dir, exist_ok=True)
    hp = dict(DEFAULTS, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, arch=arch, stem=stem,
              img_size=tuple(img_size), eval_every=eval_every, bf16=bf16,
              scale=tuple(float(v) for v in (scale if scale is not None else DEFAULTS["scale"])))
    if train_split != "train" or val_split != "val":  # recorded only when not the default (old records match)
        hp.update(train_split=train_split, val_split=val_split)
    if not (0 < hp["scale"][0] <= hp["scale"][1]):
        raise ValueError(f"train_reference: scale must be 0 < lo <= hi, got {hp['scale']}")
    cfg = vit_config(arch, img_size=tuple(img_size), stem=stem, num_classes=NUM_CLASSES, drop_path_rate=hp["drop_path"])

    train = load_split(data_dir, train_split, limit)
    val = load_split(data_dir, val_split, limit)
    log(f"train-reference: {len(train)} train ({train_split}) / {len(val)} val ({val_split}) images, {arch} stem={stem} at {img_size}, "
        f"{epochs} epochs, batch {batch_size}, lr {lr}, {torch.get_num_threads()} threads, bf16={bf16}")

    torch.manual_seed(seed)
    model = ViTSegmenter(cfg)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_embed" not in n and "cls_token" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "pos_embed" not in n and "cls_token" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": hp["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    steps_per_epoch = max(1, len(train) // batch_size)  # the last partial batch is dropped (unless it is all)
    total_steps = steps_per_epoch * epochs
    warmup_steps = steps_per_epoch * hp["warmup_epochs"]

    ckpt_path = os.path.join(out_dir, "last.pt")
    log_path = os.path.join(out_dir, "log.jsonl")
    start_epoch = 0
    if os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ck["hp"] != {k: (list(v) if isinstance(v, tuple) else v) for k, v in hp.items()}:
            log(f"train-reference: note: resuming with different settings than {ckpt_path} was written with")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        start_epoch = ck["epoch"]
        log(f"train-reference: resumed from {ckpt_path} after epoch {start_epoch}")

    record: dict = {}
    for epoch in range(start_epoch, epochs):
        model.train()
        gen = torch.Generator().manual_seed(seed * 100003 + epoch)  # the epoch's data order and augmentation
        torch.manual_seed(seed * 7919 + epoch)  # drop path
        order = torch.randperm(len(train), generator=gen).tolist()
        t0 = time.perf_counter()
        loss_sum, n_seen = 0.0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", unit="step", disable=not progress,
                   dynamic_ncols=True)
        for step in bar:
            it = epoch * steps_per_epoch + step
            for g in opt.param_groups:
                g["lr"] = lr_at(it, total_steps, warmup_steps, lr, hp["min_lr"])
            batch = [train[j] for j in order[step * batch_size : (step + 1) * batch_size]]
            pairs = [augment(s, cfg.img_size, gen, hp["scale"], hp["jitter"]) for s in batch]
            x = normalize(torch.stack([p[0] for p in pairs]) / 255.0)
            y = torch.stack([p[1] for p in pairs])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, ignore_index=IGNORE_INDEX, label_smoothing=hp["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            loss_sum += float(loss.detach()) * len(batch)
            n_seen += len(batch)
            bar.set_postfix_str(f"loss {loss_sum / n_seen:.3f}")
        record = {
            "epoch": epoch + 1,
            "loss": loss_sum / max(1, n_seen),
            "lr": opt.param_groups[0]["lr"],
            "seconds": time.perf_counter() - t0,
            "images_per_s": n_seen / (time.perf_counter() - t0),
        }
        if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
            t1 = time.perf_counter()
            metrics = evaluate_miou(model, val, cfg.img_size)
            record.update(val_miou=metrics["miou"], val_pixel_acc=metrics["pixel_acc"],
                          val_eval_seconds=time.perf_counter() - t1)
            if epoch + 1 == epochs:
                record["val_per_class"] = metrics["per_class"]
        log("train-reference: " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()
                                               if k != "val_per_class"}))
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        tmp = ckpt_path + ".tmp"
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch + 1,
                    "hp": {k: (list(v) if isinstance(v, tuple) else v) for k, v in hp.items()},
                    "config": _config_dict(cfg)}, tmp)
        os.replace(tmp, ckpt_path)

    final = export_fp16(model, cfg, os.path.join(out_dir, "model.safetensors"), extra={"train": record, "hp": hp})
    log(f"train-reference: wrote {final}")
    return record


def read_log(path: str) -> List[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
