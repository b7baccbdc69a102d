"""A plain ViT with a Segmenter-style linear decoder.

Parameter names follow timm's ``VisionTransformer`` (``patch_embed.proj``, ``cls_token``,
``pos_embed``, ``blocks.{i}.norm1/attn.qkv/attn.proj/norm2/mlp.fc1/mlp.fc2``, ``norm``),
so a timm state dict loads with :meth:`ViTSegmenter.load_timm_state_dict`. The decoder
(``decoder.head``) is Segmenter's linear decoder: a per-patch linear classifier whose
(B, classes, h, w) map is bilinearly upsampled to the input size.

Blocks use ``scaled_dot_product_attention`` unless asked for their attention
probabilities (``return_attn=True``), which only the pruning layers of a patched model do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from python_ref.flops import ViTShape
from .engine import attention_entropy

PRESETS: Dict[str, Dict[str, int]] = {
    "vit_ti": dict(embed_dim=192, depth=12, num_heads=3),
    "vit_s": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16),
}


@dataclass(frozen=True)
class ViTConfig:
    img_size: Tuple[int, int] = (240, 320)
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    num_classes: int = 11
    class_token: bool = True
    norm_eps: float = 1e-6
    stem: str = "patch"  # "patch": one stride-p conv; "conv": stride-2 3x3 convs (Xiao et al. 2021)
    drop_path_rate: float = 0.0  # stochastic depth while training (identity in eval)

    @property
    def grid(self) -> Tuple[int, int]:
        return self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size

    @property
    def num_prefix_tokens(self) -> int:
        return 1 if self.class_token else 0

    def vit_shape(self, img_size: Optional[Tuple[int, int]] = None, **cost_options) -> ViTShape:
        """The cost-model description of this model on images of ``img_size`` (default its own)."""
        h, w = img_size or self.img_size
        p = self.patch_size
        return ViTShape(
            depth=self.depth,
            embed_dim=self.embed_dim,
            num_heads=self.num_heads,
            num_patches=(h // p) * (w // p),
            mlp_ratio=self.mlp_ratio,
            num_protected=self.num_prefix_tokens,
            patch_size=p,
            in_chans=self.in_chans,
            num_classes=self.num_classes,
            image_hw=(h, w),
            stem_flops=conv_stem_flops(self, (h, w)) if self.stem == "conv" else None,
            **cost_options,
        )


def conv_stem_channels(cfg: "ViTConfig") -> Tuple[int, ...]:
    """Output channels of the stride-2 3x3 convs of the conv stem (log2(patch) of them)."""
    n = int(round(math.log2(cfg.patch_size)))
    if 2**n != cfg.patch_size:
        raise ValueError(f"conv stem: patch_size must be a power of two, got {cfg.patch_size}")
    return tuple(max(8, cfg.embed_dim // 2 ** (n - 1 - i)) for i in range(n))


def conv_stem_flops(cfg: "ViTConfig", img_hw: Tuple[int, int]) -> float:
    """FLOPs (2 per multiply-add) of the conv stem on an image of ``img_hw``."""
    h, w = img_hw
    total, cin = 0.0, cfg.in_chans
    for cout in conv_stem_channels(cfg):
        h, w = (h + 1) // 2, (w + 1) // 2  # 3x3, stride 2, padding 1
        total += 2.0 * h * w * cout * cin * 9
        cin = cout
    return total + 2.0 * h * w * cfg.embed_dim * cin  # the 1x1 projection


def vit_config(arch: str = "vit_ti", **overrides) -> ViTConfig:
    """A preset (``vit_ti``, ``vit_s``, ``vit_b``, ``vit_l``) with /16 patches, with overrides."""
    if arch not in PRESETS:
        raise ValueError(f"vit_config: arch must be one of {sorted(PRESETS)}, got {arch!r}")
    return replace(ViTConfig(**PRESETS[arch]), **overrides)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        x = self.proj(x)
        grid = (x.shape[2], x.shape[3])
        return x.flatten(2).transpose(1, 2), grid


class ConvStem(nn.Module):
    """Early convolutions (Xiao et al. 2021): log2(p) stride-2 3x3 conv-BN-ReLU layers and
    a 1x1 projection, in place of the single stride-p patch convolution. The token grid is
    the patch grid of a stride-p embedding, so pruning and the edge term are unchanged."""

    def __init__(self, cfg: "ViTConfig"):
        super().__init__()
        self.patch_size = cfg.patch_size
        layers, cin = [], cfg.in_chans
        for cout in conv_stem_channels(cfg):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin = cout
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(cin, cfg.embed_dim, kernel_size=1)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        x = self.proj(self.stem(x))[..., :h, :w]  # pixels past the patch grid are ignored
        return x.flatten(2).transpose(1, 2), (h, w)


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth: drop the residual branch per sample while training."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, return_attn: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = None
        if return_attn:  # the same arithmetic as python_ref.attention_entropy
            attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
            out = attn @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c)), attn

    def forward_entropy(self, x: Tensor, qs: Sequence[float]) -> Tuple[Tensor, Tensor]:
        """Attention plus the per-token multi-scale entropies (B, N, len(qs)) of its map,
        from ``torch.ops.lvtp.attention_entropy``: the fused kernels never hold the N x N map."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out, ent = attention_entropy(q, k, v, qs, self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, n, c)), ent


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, eps: float, drop_path: float = 0.0):
        super().__init__()
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, return_attn: bool = False):
        y, attn = self.attn(self.norm1(x), return_attn)
        x = x + drop_path(y, self.drop_path, self.training)
        x = x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)
        return (x, attn) if return_attn else x

    def forward_entropy(self, x: Tensor, qs: Sequence[float]) -> Tuple[Tensor, Tensor]:
        """The block, plus its attention's per-token entropies (see Attention.forward_entropy)."""
        y, ent = self.attn.forward_entropy(self.norm1(x), qs)
        x = x + drop_path(y, self.drop_path, self.training)
        x = x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)
        return x, ent


class LinearDecoder(nn.Module):
    """Segmenter's linear decoder: per-patch class logits, upsampled to the image.

    On a GPU the (B, classes, h, w) logits are made contiguous (NCHW) before the bilinear
    upsample: the transposed view is channels-last, whose CUDA upsample ran at 220 GB/s on
    an H200 (2.9 of 7.7 ms of a ViT-B b8 forward with 150 classes); the copy is only
    B*h*w*classes values. On the CPU the channels-last view is kept (its NHWC kernel was
    the faster one there, benchmarks/bench_head.py). [H] item 6."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.head = nn.Linear(dim, num_classes)

    def forward(self, patches: Tensor, grid: Tuple[int, int], out_hw: Tuple[int, int]) -> Tensor:
        logits = self.head(patches).transpose(1, 2).reshape(patches.shape[0], -1, *grid)
        if logits.is_cuda:
            logits = logits.contiguous()
        return F.interpolate(logits, size=out_hw, mode="bilinear", align_corners=False)


def resample_pos_embed(pos: Tensor, old_grid: Tuple[int, int], new_grid: Tuple[int, int], num_prefix: int) -> Tensor:
    """Bicubic resampling of the patch part of an absolute position embedding (1, P+h*w, C),
    antialiased as timm's ``resample_abs_pos_embed`` does."""
    if tuple(old_grid) == tuple(new_grid):
        return pos
    prefix, grid_pos = pos[:, :num_prefix], pos[:, num_prefix:]
    c = pos.shape[-1]
    grid_pos = grid_pos.reshape(1, old_grid[0], old_grid[1], c).permute(0, 3, 1, 2)
    grid_pos = F.interpolate(grid_pos.float(), size=new_grid, mode="bicubic", antialias=True, align_corners=False)
    grid_pos = grid_pos.to(pos.dtype)
    return torch.cat([prefix, grid_pos.permute(0, 2, 3, 1).reshape(1, -1, c)], dim=1)


class ViTSegmenter(nn.Module):
    """Plain ViT encoder + linear decoder: (B, 3, H, W) images -> (B, classes, H, W) logits."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.num_prefix_tokens = cfg.num_prefix_tokens
        if cfg.stem not in ("patch", "conv"):
            raise ValueError(f"ViTSegmenter: stem must be 'patch' or 'conv', got {cfg.stem!r}")
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, dim) if cfg.stem == "patch" else ConvStem(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cfg.class_token else None
        gh, gw = cfg.grid
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + gh * gw, dim))
        self.blocks = nn.ModuleList(
            [
                Block(dim, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.norm_eps, cfg.drop_path_rate * i / max(1, cfg.depth - 1))
                for i in range(cfg.depth)
            ]
        )
        self.norm = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.decoder = LinearDecoder(dim, cfg.num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight
        nn.init.trunc_normal_(w.view(w.shape[0], -1), std=math.sqrt(1.0 / w[0].numel()))
        nn.init.zeros_(self.patch_embed.proj.bias)
        for m in self.patch_embed.modules():
            if isinstance(m, nn.Conv2d) and m is not self.patch_embed.proj:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    # ------------------------------------------------------------------ forward
    def embed(self, image: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        """Patch tokens with the class token prepended and position embeddings added."""
        x, grid = self.patch_embed(image)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        pos = resample_pos_embed(self.pos_embed, self.cfg.grid, grid, self.num_prefix_tokens)
        return x + pos, grid

    def forward_blocks(self, x: Tensor, image: Tensor) -> Tensor:
        """The transformer blocks; a patched model prunes here and returns the rebuilt map."""
        for blk in self.blocks:
            x = blk(x)
        return x

    def forward(self, image: Tensor) -> Tensor:
        x, grid = self.embed(image)
        x = self.forward_blocks(x, image)
        x = self.norm(x)
        return self.decoder(x[:, self.num_prefix_tokens :], grid, (image.shape[-2], image.shape[-1]))

    # ------------------------------------------------------------------ helpers
    def vit_shape(self, img_size: Optional[Tuple[int, int]] = None, **cost_options) -> ViTShape:
        """The cost-model description of this model on images of ``img_size`` (default its own)."""
        return self.cfg.vit_shape(img_size, **cost_options)

    def load_timm_state_dict(self, state_dict: Dict[str, Tensor], strict: bool = True):
        """Load a timm ``VisionTransformer`` state dict (its classifier ``head`` is dropped;
        the position embedding is resampled when its grid differs)."""
        if "reg_token" in state_dict:
            raise ValueError("load_timm_state_dict: register tokens (reg_token) are not supported by ViTSegmenter")
        sd = {k: v for k, v in state_dict.items() if not k.startswith(("head.", "fc_norm.", "norm_pre."))}
        if "pos_embed" in sd and sd["pos_embed"].shape != self.pos_embed.shape:
            n_old = sd["pos_embed"].shape[1] - self.num_prefix_tokens
            side = int(round(math.sqrt(n_old)))
            if side * side != n_old:
                raise ValueError(f"load_timm_state_dict: pos_embed of {n_old} patches is not a square grid")
            sd["pos_embed"] = resample_pos_embed(sd["pos_embed"], (side, side), self.cfg.grid, self.num_prefix_tokens)
        missing, unexpected = self.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.startswith("decoder.")]
        if strict and (missing or unexpected):
            raise ValueError(f"load_timm_state_dict: missing {missing}, unexpected {unexpected}")
        return missing, unexpected


def build_model(arch: str = "vit_ti", seed: int = 0, **overrides) -> ViTSegmenter:
    """A ViT segmenter with deterministic random weights (``seed``)."""
    cfg = vit_config(arch, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ViTSegmenter(cfg).eval()
