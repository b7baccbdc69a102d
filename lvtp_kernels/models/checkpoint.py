"""Checkpoint files of the package's ViT segmenter: fp16 safetensors weights with the model
config (and training record) in the file's metadata and in a ``.json`` beside it; also
reads a folder holding ``model.safetensors``, a ``last.pt`` training checkpoint and the
v1 ``model.pt`` pickle (``weights_only=True``: no code runs from a checkpoint)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, Optional, Tuple

import torch

from .vit import ViTConfig, ViTSegmenter


def _config_dict(cfg: ViTConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["img_size"] = list(cfg.img_size)
    return d


def config_from_dict(d: dict) -> ViTConfig:
    d = dict(d)
    d["img_size"] = tuple(d["img_size"])
    return ViTConfig(**d)


WEIGHTS_FORMAT = "lvtp-reference-v2"  # safetensors weights + JSON config (v1: a torch pickle)


def _sidecar(path: str) -> str:
    """``model.safetensors`` -> ``model.json``: the config and record beside the weights."""
    return os.path.splitext(path)[0] + ".json"


def export_fp16(model: ViTSegmenter, cfg: ViTConfig, path: str, extra: Optional[dict] = None) -> str:
    """Save the fp16 weights as safetensors (what ``load_reference`` reads), with the config
    (and ``extra``, the training record) in the file's metadata and in ``<stem>.json``
    beside it. ``path`` must end in ``.safetensors``."""
    from safetensors.torch import save_file

    if not path.endswith(".safetensors"):
        raise ValueError(f"export_fp16: path must end in .safetensors, got {path!r}")
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    info = {"format": WEIGHTS_FORMAT, "config": _config_dict(cfg)}
    if extra:
        info["meta"] = json.loads(json.dumps(extra, default=list))
    save_file(sd, path, metadata={k: (v if isinstance(v, str) else json.dumps(v)) for k, v in info.items()})
    with open(_sidecar(path), "w") as f:
        json.dump(info, f, indent=1)
    return path


def read_checkpoint(path: str) -> Tuple[dict, Dict[str, torch.Tensor], dict]:
    """(config dict, state dict, meta) of a checkpoint: a ``.safetensors`` file (its config
    from the file's metadata, else from ``<stem>.json`` or ``config.json`` beside it), a
    folder holding ``model.safetensors``, or a torch file (``last.pt`` of a training run, or
    a v1 ``model.pt``; loaded with ``weights_only=True``, so no code runs from it)."""
    if os.path.isdir(path):
        inner = os.path.join(path, "model.safetensors")
        if not os.path.isfile(inner):
            raise ValueError(f"{path!r} is a folder without model.safetensors")
        path = inner
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as f:
                meta = dict(f.metadata() or {})
                sd = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise ValueError(f"{path!r} is not a readable safetensors file ({type(exc).__name__}: {exc})") from None
        info = {k: json.loads(v) for k, v in meta.items() if k in ("config", "meta")}
        if "config" not in info:
            for side in (_sidecar(path), os.path.join(os.path.dirname(path), "config.json")):
                if os.path.isfile(side):
                    with open(side) as f:
                        data = json.load(f)
                    info = {"config": data.get("config", data), "meta": data.get("meta", {})}
                    break
        if "config" not in info:
            raise ValueError(f"{path!r} has no lvtp config (in its metadata or in {os.path.basename(_sidecar(path))} "
                             "or config.json beside it)")
        return info["config"], sd, info.get("meta", {})
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)  # no code execution from a checkpoint
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file: one clear error
        raise ValueError(f"{path!r} is not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if isinstance(payload, dict) and "config" in payload and ("state_dict" in payload or "model" in payload):
        sd = payload["state_dict"] if "state_dict" in payload else payload["model"]
        return payload["config"], sd, payload.get("meta", {})
    raise ValueError(f"{path!r} is not an lvtp reference checkpoint (no config/state_dict)")


def load_checkpoint(path: str, dtype: torch.dtype = torch.float32) -> ViTSegmenter:
    """A model from ``export_fp16``'s safetensors file (or a folder holding one, a
    ``last.pt`` training checkpoint or a v1 ``model.pt``), in eval mode."""
    config, sd, _ = read_checkpoint(path)
    try:
        cfg = dataclasses.replace(config_from_dict(config), drop_path_rate=0.0)
        model = ViTSegmenter(cfg)
        model.load_state_dict({k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()})
    except (TypeError, KeyError, RuntimeError) as exc:
        raise ValueError(f"{path!r}: its weights do not fit its config ({type(exc).__name__}: {exc})") from None
    return model.to(dtype).eval()
