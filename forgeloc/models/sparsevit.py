"""SparseViT: a sparse-coding transformer for image manipulation localization.

Su, Ma, Zhu, Niu, Lei, Zhou, "Can We Get Rid of Handcrafted Feature Extractors? SparseViT:
Nonsemantics-Centered, Parameter-Efficient Image Manipulation Localization through Spare-Coding
Transformer", AAAI 2025 (arXiv 2412.14598). Official code: github.com/scu-zjz/SparseViT; the same
network is ``SparseViT`` in IMDLBenCo. Written from the paper and the spec in forgeloc's design
notes; parameter names follow the authors' state dict so their checkpoints load with
``strict=True``.

Architecture (input ``img_size`` x ``img_size``, 512 in the paper):

* ``encoder_net``: a UniFormer-Base-style backbone (Li et al., "UniFormer", ICLR 2022). Stages 1-2
  are convolutional ``CBlock``s (depthwise-conv positional encoding, BatchNorm, a 5x5 depthwise
  "local affinity" conv, conv MLP). Stages 3-4 are ``SABlock``s with **sparse self-attention**: the
  map is split into interleaved groups, token (h, w) joining group (h mod g, w mod g) for a stride
  ("sparsity rate") g, and attention runs inside each group only; g shrinks block by block so the
  last blocks of each stage are global. Their FFN is SegFormer's Mix-FFN and both residual branches
  carry layer scale (CaiT, Touvron et al. 2021).
* ``lmu``: the Learnable Feature Fusion (LFF) head: six maps (four from stage 3, two from stage 4)
  projected to 512 channels, resized to stride 16, summed with learnable per-channel weights,
  LayerNorm, a 1x1 conv to one logit map, bilinear upsampling to the input size.
* Loss: BCE-with-logits (mean) on that single map; there is no image-level head.

Layout: stages 1-2 run on NCHW tensors that are channels-last in memory, stages 3-4 on
(B, H, W, C) token grids, so no block pays for NCHW <-> token transposes.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from forgeloc.io.state_dict import KeyReport, WeightsMismatchError, load_state_dict_file
from forgeloc.models.base import ForgeryModel
from forgeloc.models.layers import DropPath, Linear, MixFFN
from forgeloc.models.registry import register_model

__all__ = [
    "CBlock",
    "LearnableFeatureFusion",
    "PatchEmbed",
    "SABlock",
    "SparseAttention",
    "SparseViT",
    "SparseViTBackbone",
    "sparse_group",
    "sparse_ungroup",
    "sparsevit",
    "sparsevit_tiny",
]

_logger = logging.getLogger(__name__)

# The reference derives each block's group side ("sparse_size") from these constants, the stage-3 and
# stage-4 map sides at 512 input, not from the actual map size: sparse_size = 32 // rate in stage 3
# and 16 // rate in stage 4. Kept so that configurations at other input sizes (e.g. the 128-pixel
# tiny model) group exactly like the authors' code.
_STAGE3_NOMINAL_SIDE = 32
_STAGE4_NOMINAL_SIDE = 16
# Stage 3 switches sparsity rate every 5 blocks, stage 4 every 4 blocks (and emits features there).
_STAGE3_RATE_EVERY = 5
_STAGE4_RATE_EVERY = 4

UNIFORMER_WEIGHTS_HELP = (
    "The SparseViT authors start from UniFormer-Base ImageNet-1k weights: their train.sh names "
    "uniformer_base_ls_in1k.pth (linked from github.com/scu-zjz/SparseViT's README, Google Drive "
    "https://drive.google.com/file/d/1XPjAXhDS6nGNXb11VzgdNqEeM7X0p2t9); IMDLBenCo recommends "
    "uniformer_base_in1k.pth from https://huggingface.co/Sense-X/uniformer_image. Download one and "
    "pass its local path (forgeloc never downloads)."
)
SPARSEVIT_WEIGHTS_HELP = (
    "The authors' trained SparseViT checkpoint (checkpoint.pth) is on Google Drive: "
    "https://drive.google.com/file/d/104BPPvLXkxuPu_NHaxjesdcdZ-ln92-G"
)


# --------------------------------------------------------------------------------------------------
# Sparse regrouping
# --------------------------------------------------------------------------------------------------
def sparse_group(x: torch.Tensor, sparse_size: int) -> torch.Tensor:
    """Split a (B, H, W, C) grid into dilated groups of ``sparse_size``² tokens: (B·g², S², C).

    With stride g = H / S, token (h, w) = (i·g + r, j·g + c) goes to group (r, c); groups are ordered
    (b, r, c) row-major and tokens inside a group (i, j) row-major — the reference's order, so
    intermediate tokens can be compared with the authors' code. SparseViT paper, "sparse
    self-attention"; g is the paper's sparsity rate.
    """
    B, H, W, C = x.shape
    g = _group_stride(H, W, sparse_size)
    # Splitting h into (i, r) and w into (j, c) is a view; the permute + reshape is the only copy,
    # and no copy at all when g == 1 (global attention).
    x = x.view(B, sparse_size, g, sparse_size, g, C).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B * g * g, sparse_size * sparse_size, C)


def sparse_ungroup(x: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`sparse_group`: (B·g², S², *rest) back to the (B, H, W, prod(rest)) grid."""
    n = x.shape[1]
    S = math.isqrt(n)
    g = height // S
    rest = x.shape[2:]
    x = x.view(batch, g, g, S, S, *rest)
    # (b, r, c, i, j, ...) -> (b, i, r, j, c, ...): h = i·g + r, w = j·g + c
    x = x.permute(0, 3, 1, 4, 2, *range(5, x.ndim))
    return x.reshape(batch, height, width, -1)


def _group_stride(H: int, W: int, sparse_size: int) -> int:
    if H != W or H % sparse_size:
        raise ValueError(
            f"sparse attention needs a square map whose side is a multiple of the group side "
            f"{sparse_size}, got {H}x{W}"
        )
    return H // sparse_size


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------
class CMlp(nn.Module):
    """The conv MLP of UniFormer's CBlocks: 1x1 conv → GELU → 1x1 conv."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(x))
        x = self.drop(x)
        x = self.fc2(x)
        return self.drop(x)


class CBlock(nn.Module):
    """UniFormer's convolutional block (stages 1-2): DPE, local conv "attention", conv MLP.

    ``x + dwconv3(x)`` (dynamic position encoding), then ``x + conv2(dwconv5(conv1(BN(x))))`` and
    ``x + MLP(BN(x))``, both with stochastic depth. NCHW in and out.
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.BatchNorm2d(dim)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.attn = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = CMlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        x = x + self.drop_path(self.conv2(self.attn(self.conv1(self.norm1(x)))))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SparseAttention(nn.Module):
    """Multi-head self-attention inside the dilated groups of :func:`sparse_group`.

    No positional term of any kind, so only group *membership* matters (SparseViT paper, sparse
    self-attention). (B, H, W, C) in and out; ``proj`` runs after the grid is restored, which is
    the same per-token map as the reference's projection inside the groups.
    """

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.attn_drop = attn_drop
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, sparse_size: int) -> torch.Tensor:
        B, H, W, _ = x.shape
        tokens = sparse_group(x, sparse_size)
        BG, N, _ = tokens.shape
        q, k, v = self.qkv(tokens).view(BG, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if torch.jit.is_tracing():
            # FLOP counters (fvcore) trace the model and have no handler for the fused SDPA op; the
            # explicit form makes them count the two attention matmuls. Same math.
            attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
            attn = F.dropout(attn, self.attn_drop, self.training)
            out = attn @ v
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale
            )
        # (B·G, heads, N, d) → (B·G, N, heads, d) is a view; the ungroup copy merges heads back.
        out = sparse_ungroup(out.transpose(1, 2), B, H, W)
        return self.proj_drop(self.proj(out))


class SABlock(nn.Module):
    """Sparse-attention block (stages 3-4) with Mix-FFN and layer scale; (B, H, W, C) in and out.

    ``t + γ1·SparseAttn(LN(t))`` then ``t + γ2·MixFFN(LN(t))``, each with stochastic depth. The
    Mix-FFN depthwise conv sees the full H x W grid, not the groups. ``pos_embed`` exists in the
    authors' checkpoints but their forward never uses it; it is kept (unused) for ``strict`` loading.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sparse_size: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale_init: float = 1e-6,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.sparse_size = sparse_size
        # Registered first so that the state-dict order matches the authors' (own params first).
        self.gamma_1 = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.gamma_2 = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)  # unused, see docstring
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = SparseAttention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        x = x + self.drop_path(self.gamma_1 * self.attn(self.norm1(x), self.sparse_size))
        y = self.mlp(self.norm2(x).view(B, H * W, C), H, W).view(B, H, W, C)
        return x + self.drop_path(self.gamma_2 * y)


class PatchEmbed(nn.Module):
    """Strided conv (kernel = stride = ``patch_size``) then LayerNorm over channels (eps 1e-5).

    Returns a (B, H/p, W/p, C) grid (channels last).
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        # norm before proj: the authors' registration (and state-dict) order
        self.norm = nn.LayerNorm(embed_dim)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


# --------------------------------------------------------------------------------------------------
# Backbone and head
# --------------------------------------------------------------------------------------------------
def _stage_emits(depth3: int, depth4: int) -> tuple[list[int], list[int]]:
    """Block indices after which stage 3 / stage 4 emit a raw feature map (the reference's rule).

    Stage 3 emits after every 5th block except the 20th (the normed end-of-stage map replaces it),
    stage 4 after every 4th block; each stage then emits its normed output.
    """
    s3 = [i for i in range(depth3) if (i + 1) % _STAGE3_RATE_EVERY == 0 and (i + 1) // _STAGE3_RATE_EVERY != 4]
    s4 = [i for i in range(depth4) if (i + 1) % _STAGE4_RATE_EVERY == 0]
    return s3, s4


def _rate(rates: list[int] | tuple[int, ...], block: int, every: int, stage: int) -> int:
    idx = block // every
    if idx >= len(rates):
        raise ValueError(
            f"stage {stage} block {block} needs sparsity rate #{idx} (one rate per {every} blocks) but only "
            f"{len(rates)} were given: {list(rates)}"
        )
    return int(rates[idx])


class SparseViTBackbone(nn.Module):
    """The SparseViT encoder (``encoder_net``): UniFormer-style stages with sparse attention.

    ``forward`` returns the six maps of the LFF head, in its order: ``third1``, ``third2``,
    ``third3`` (raw stage-3 maps after blocks 5, 10, 15), ``third`` (end of stage 3 through
    ``norm3``), ``last1`` (raw stage-4 map after block 4) and ``last`` (end of stage 4 through
    ``norm4``) — names as in the authors' code. ``norm1``/``norm2`` exist for checkpoint
    compatibility and are unused, as in the reference.
    """

    def __init__(
        self,
        depth: list[int] | tuple[int, ...] = (5, 8, 20, 7),
        embed_dim: list[int] | tuple[int, ...] = (64, 128, 320, 512),
        head_dim: int = 64,
        img_size: int = 512,
        in_chans: int = 3,
        s_blocks3: list[int] | tuple[int, ...] = (8, 4, 2, 1),
        s_blocks4: list[int] | tuple[int, ...] = (2, 1),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if len(depth) != 4 or len(embed_dim) != 4:
            raise ValueError(f"depth and embed_dim need 4 entries, got {list(depth)} and {list(embed_dim)}")
        if img_size % 32:
            raise ValueError(f"img_size must be a multiple of 32, got {img_size}")
        self.img_size = img_size
        self.embed_dim = list(embed_dim)
        self.emit3, self.emit4 = _stage_emits(depth[2], depth[3])

        self.patch_embed1 = PatchEmbed(in_chans, embed_dim[0], 4)
        self.patch_embed2 = PatchEmbed(embed_dim[0], embed_dim[1], 2)
        self.patch_embed3 = PatchEmbed(embed_dim[1], embed_dim[2], 2)
        self.patch_embed4 = PatchEmbed(embed_dim[2], embed_dim[3], 2)
        self.pos_drop = nn.Dropout(drop_rate)

        # Stochastic depth grows linearly over all blocks of all stages (Huang et al. 2016 rule).
        dpr = torch.linspace(0, drop_path_rate, sum(depth)).tolist()
        start = [0, depth[0], depth[0] + depth[1], depth[0] + depth[1] + depth[2]]
        self.blocks1 = nn.ModuleList(
            CBlock(embed_dim[0], mlp_ratio, drop_rate, dpr[start[0] + i]) for i in range(depth[0])
        )
        self.norm1 = nn.LayerNorm(embed_dim[0], eps=norm_eps)
        self.blocks2 = nn.ModuleList(
            CBlock(embed_dim[1], mlp_ratio, drop_rate, dpr[start[1] + i]) for i in range(depth[1])
        )
        self.norm2 = nn.LayerNorm(embed_dim[1], eps=norm_eps)

        def sa_stage(stage: int, dim: int, n: int, rates: Any, every: int, nominal: int, side: int) -> nn.ModuleList:
            blocks = []
            for i in range(n):
                rate = _rate(rates, i, every, stage)
                if rate < 1 or nominal % rate:
                    raise ValueError(f"stage {stage} sparsity rate {rate} must divide {nominal}")
                sparse_size = nominal // rate
                if side % sparse_size:
                    raise ValueError(
                        f"img_size {img_size} gives a {side}x{side} stage-{stage} map, which cannot be cut into "
                        f"groups of side {sparse_size} (= {nominal} // rate {rate}, the reference's rule)"
                    )
                blocks.append(
                    SABlock(
                        dim, dim // head_dim, sparse_size, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate,
                        dpr[start[stage - 1] + i], norm_eps=norm_eps,
                    )
                )
            return nn.ModuleList(blocks)

        self.blocks3 = sa_stage(3, embed_dim[2], depth[2], s_blocks3, _STAGE3_RATE_EVERY, _STAGE3_NOMINAL_SIDE,
                                img_size // 16)
        self.norm3 = nn.LayerNorm(embed_dim[2], eps=norm_eps)
        self.blocks4 = sa_stage(4, embed_dim[3], depth[3], s_blocks4, _STAGE4_RATE_EVERY, _STAGE4_NOMINAL_SIDE,
                                img_size // 32)
        self.norm4 = nn.LayerNorm(embed_dim[3], eps=norm_eps)

    @property
    def feature_names(self) -> list[str]:
        names = [f"third{(i + 1) // _STAGE3_RATE_EVERY}" for i in self.emit3] + ["third"]
        return names + [f"last{(i + 1) // _STAGE4_RATE_EVERY}" for i in self.emit4] + ["last"]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = x.shape[-2:]
        if (h, w) != (self.img_size, self.img_size):
            raise ValueError(f"SparseViT backbone takes {self.img_size}x{self.img_size} inputs, got {h}x{w}")
        # Stages 1-2: NCHW views of channels-last memory (the patch embeds emit NHWC).
        x = self.pos_drop(self.patch_embed1(x).permute(0, 3, 1, 2))
        for blk in self.blocks1:
            x = blk(x)
        x = self.patch_embed2(x).permute(0, 3, 1, 2)
        for blk in self.blocks2:
            x = blk(x)
        # Stages 3-4: (B, H, W, C) grids.
        out: dict[str, torch.Tensor] = {}
        x = self.patch_embed3(x)
        for i, blk in enumerate(self.blocks3):
            x = blk(x)
            if i in self.emit3:
                out[f"third{(i + 1) // _STAGE3_RATE_EVERY}"] = x.permute(0, 3, 1, 2)
        out["third"] = self.norm3(x).permute(0, 3, 1, 2)
        x = self.patch_embed4(x.permute(0, 3, 1, 2))
        for i, blk in enumerate(self.blocks4):
            x = blk(x)
            if i in self.emit4:
                out[f"last{(i + 1) // _STAGE4_RATE_EVERY}"] = x.permute(0, 3, 1, 2)
        out["last"] = self.norm4(x).permute(0, 3, 1, 2)
        return out


class LearnableFeatureFusion(nn.Module):
    """The LFF head (``lmu``; ``Multiple`` in the authors' code). SparseViT paper, "LFF".

    ``F = Σ_k γ_k ⊙ c_k`` over six maps at stride 16: c1..c4 = 1x1 projections of the four stage-3
    maps, c5, c6 = the two stage-4 maps bilinearly upsampled x2; γ_k per-channel, initialised to
    1e-6. Then LayerNorm over channels and a 1x1 conv to ``predict_channels`` logits. ``forward``
    returns ``(logits, fused)`` where ``fused`` is F **after** the LayerNorm (the 1x1 conv's input).
    """

    def __init__(
        self,
        in_dim: int = 320,
        embed_dim: int = 512,
        predict_channels: int = 1,
        init_value: float = 1e-6,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        for k in range(1, 7):
            setattr(self, f"gamma{k}", nn.Parameter(torch.full((embed_dim,), init_value)))
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.conv_layer1 = nn.Conv2d(in_dim, embed_dim, 1)
        self.conv_layer2 = nn.Conv2d(in_dim, embed_dim, 1)
        self.conv_layer3 = nn.Conv2d(in_dim, embed_dim, 1)
        self.conv_layer4 = nn.Conv2d(in_dim, embed_dim, 1)
        self.conv_last = nn.Conv2d(embed_dim, predict_channels, 1)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if len(feats) != 6:
            raise ValueError(f"the LFF head fuses exactly 6 feature maps, got {len(feats)}")
        c1 = self.conv_layer1(feats[0])
        c2 = self.conv_layer2(feats[1])
        c3 = self.conv_layer3(feats[2])
        c4 = self.conv_layer4(feats[3])
        size = c1.shape[-2:]
        c5 = F.interpolate(feats[4], size=size, mode="bilinear", align_corners=False)
        c6 = F.interpolate(feats[5], size=size, mode="bilinear", align_corners=False)
        fused = (
            self.gamma1[:, None, None] * c1
            + self.gamma2[:, None, None] * c2
            + self.gamma3[:, None, None] * c3
            + self.gamma4[:, None, None] * c4
            + self.gamma5[:, None, None] * c5
            + self.gamma6[:, None, None] * c6
        )
        fused = self.norm(fused.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.conv_last(fused), fused


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------
class SparseViT(ForgeryModel):
    """SparseViT (Su et al., AAAI 2025) under the forgeloc model contract.

    Takes exactly ``input_size`` x ``input_size`` images (the reference's patch embedding, sparse
    grouping and final upsampling all assume it); the inference engine resizes or tiles first.

    Output: ``pred_mask`` = sigmoid(``logits``), ``logits`` (B, 1, H, W) = the LFF logit map
    upsampled x16 (bilinear), ``features`` = the fused LFF map after its LayerNorm, (B, 512, H/16,
    W/16), and with a mask ``loss`` = ``loss_terms["bce"]`` = mean BCE-with-logits.

    Args:
        depth, embed_dim, head_dim, s_blocks3, s_blocks4, mlp_ratio, qkv_bias: backbone
            configuration with the authors' names; ``s_blocks3``/``s_blocks4`` are the sparsity
            rates (one per 5 stage-3 blocks / 4 stage-4 blocks).
        input_size: the only accepted input side (``img_size``, the authors' name, still works
            with a deprecation warning).
        drop_path_rate: stochastic depth at the last block (the authors' wrapper fixes 0.2).

    The UniFormer-Base ImageNet backbone weights are loaded by :func:`load_pretrained`
    (``create_model("sparsevit", pretrained={"pretrained_path": ...})``), not by the constructor.
    """

    def __init__(
        self,
        depth: list[int] | tuple[int, ...] = (5, 8, 20, 7),
        embed_dim: list[int] | tuple[int, ...] = (64, 128, 320, 512),
        head_dim: int = 64,
        input_size: int = 512,
        s_blocks3: list[int] | tuple[int, ...] = (8, 4, 2, 1),
        s_blocks4: list[int] | tuple[int, ...] = (2, 1),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.2,
        img_size: int | None = None,
    ) -> None:
        super().__init__()
        if img_size is not None:
            warnings.warn("SparseViT(img_size=...) is deprecated: the option is called input_size, as in every "
                          "forgeloc model", DeprecationWarning, stacklevel=2)
            input_size = img_size
        emit3, emit4 = _stage_emits(depth[2], depth[3]) if len(depth) == 4 else ([], [])
        if len(emit3) + len(emit4) + 2 != 6:
            raise ValueError(
                f"the LFF head needs 6 feature maps: stage 3 must have 15 or 20 blocks and stage 4 4-7 blocks "
                f"(got depth {list(depth)})"
            )
        self.input_size = input_size
        self.size_divisor = 32
        self.encoder_net = SparseViTBackbone(
            depth=depth, embed_dim=embed_dim, head_dim=head_dim, img_size=input_size, s_blocks3=s_blocks3,
            s_blocks4=s_blocks4, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path_rate=drop_path_rate,
        )
        self.lmu = LearnableFeatureFusion(in_dim=embed_dim[2], embed_dim=embed_dim[3])
        self.apply(_init_weights)

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        image = self.require_image(batch)
        self.check_input_size(image)
        feats = self.encoder_net(image)
        lmu_logits, fused = self.lmu(list(feats.values()))
        logits = F.interpolate(lmu_logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return self.sigmoid_bce_output(logits, batch, features=fused)


@torch.no_grad()
def _trunc_normal_(t: torch.Tensor, std: float) -> torch.Tensor:
    """The reference's ``trunc_normal_(std=0.02)``: its bounds ±2 are absolute, i.e. ±100σ.

    The truncated and the plain normal are the same distribution that far out (P(|x| > 100σ) is
    ~1e-2000), so a plain normal is drawn: torch's inverse-CDF ``trunc_normal_`` costs ~1 s per 10 M
    values on CPU.
    """
    return t.normal_(0.0, std)


def _init_weights(m: nn.Module) -> None:
    """The authors' init: Linear trunc-normal(0.02)/0, LayerNorm 1/0, Mix-FFN dwconv fan-out normal.

    Other convs keep PyTorch's default init, as in the reference.
    """
    if isinstance(m, nn.Linear):
        _trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, MixFFN):
        conv = m.dwconv.dwconv
        fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // conv.groups
        nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / fan_out))
        nn.init.zeros_(conv.bias)


def load_uniformer_weights(
    backbone: SparseViTBackbone, path: str | Path, keep_linear_norm: bool = False
) -> dict[str, list[str]]:
    """Load UniFormer-Base ImageNet weights into the backbone (non-strict), as the authors do.

    The file's state dict (``model`` entry of a training dict, or a plain state dict) loses a
    leading ``backbone.``; keys the backbone lacks (the classifier, UniFormer's final ``norm``) are
    ignored; backbone tensors the file lacks (Mix-FFN ``dwconv``; ``gamma_*`` for the non-LS file)
    keep their init. Unless ``keep_linear_norm``, Linear and LayerNorm tensors keep their fresh init
    too, reproducing the reference (see :class:`SparseViT`). A shape mismatch is an error. Returns
    the key lists ``loaded``, ``reset``, ``ignored`` and ``missing``; logs their sizes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"UniFormer-Base pretrained weights not found: {path}. {UNIFORMER_WEIGHTS_HELP}")
    sd = {(k[len("backbone."):] if k.startswith("backbone.") else k): v for k, v in load_state_dict_file(path).items()}
    own = backbone.state_dict()
    report = KeyReport.compare(sd, own)
    if report.wrong_shape:
        raise WeightsMismatchError(
            f"{path}: {len(report.wrong_shape)} tensors do not fit the SparseViT backbone, "
            f"e.g. {report.wrong_shape[:3]}"
        )
    reset_prefixes = tuple(
        f"{name}." for name, mod in backbone.named_modules() if isinstance(mod, (nn.Linear, nn.LayerNorm))
    )
    matched = [k for k in sd if k in own]
    reset = [] if keep_linear_norm else [k for k in matched if k.startswith(reset_prefixes)]
    reset_set = set(reset)
    loaded = [k for k in matched if k not in reset_set]
    ignored, missing = report.unexpected, report.missing
    backbone.load_state_dict({k: sd[k] for k in loaded}, strict=False)
    _logger.info(
        "SparseViT: loaded %d tensors from %s into the backbone; %d Linear/LayerNorm tensors of the file %s; "
        "%d keys ignored (not in the backbone, e.g. %s); %d backbone tensors not in the file keep their init "
        "(e.g. %s)",
        len(loaded), path, len(reset),
        "kept their fresh init as in the authors' code (keep_pretrained_linear_norm=True keeps them)"
        if not keep_linear_norm else "loaded",
        len(ignored), ignored[:3], len(missing), missing[:3],
    )
    if not loaded:
        raise ValueError(f"{path}: no tensor matches the SparseViT backbone; is it a UniFormer checkpoint?")
    return {"loaded": loaded, "reset": reset, "ignored": ignored, "missing": missing}


def load_pretrained(
    model: SparseViT, pretrained_path: str | Path | None = None, keep_pretrained_linear_norm: bool = False
) -> None:
    """Initialise the backbone from a local UniFormer-Base ImageNet-1k checkpoint (training only).

    ``pretrained_path``: where the file is (see ``UNIFORMER_WEIGHTS_HELP``); ``None`` leaves the
    random init and says so. ``keep_pretrained_linear_norm``: the authors' code loads the UniFormer
    weights *before* its weight init, so every Linear and LayerNorm tensor of the checkpoint is
    replaced by a fresh init and only convs, BatchNorms and layer scales survive. False (default)
    reproduces that, as the published models were trained; True keeps all of them.
    """
    if pretrained_path is None:
        _logger.info("SparseViT: no pretrained_path, the backbone starts from random weights. %s",
                     UNIFORMER_WEIGHTS_HELP)
        return
    load_uniformer_weights(model.encoder_net, pretrained_path, keep_linear_norm=keep_pretrained_linear_norm)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: SparseViT) -> dict[str, torch.Tensor]:
    """The authors' checkpoints already use this model's keys (the module tree mirrors theirs): as is."""
    return dict(state_dict)


# --------------------------------------------------------------------------------------------------
# Registered configurations
# --------------------------------------------------------------------------------------------------
_PAPER_CONFIG: dict[str, Any] = {
    "depth": [5, 8, 20, 7],
    "embed_dim": [64, 128, 320, 512],
    "head_dim": 64,
    "input_size": 512,
    "s_blocks3": [8, 4, 2, 1],
    "s_blocks4": [2, 1],
    "mlp_ratio": 4.0,
    "drop_path_rate": 0.2,
}

# The parity fixture's small configuration: at 128 px stage 3 is 8x8 (blocks 0-4: 4 groups of 4x4,
# blocks 5-14 global) and stage 4 is 4x4 (global); the head still needs 320/512-channel maps.
_TINY_CONFIG: dict[str, Any] = {
    **_PAPER_CONFIG,
    "depth": [1, 1, 15, 4],
    "embed_dim": [16, 32, 320, 512],
    "input_size": 128,
    "s_blocks3": [8, 4, 4],
    "s_blocks4": [4],
    "mlp_ratio": 1.0,
}


@register_model
def sparsevit(**kwargs: Any) -> SparseViT:
    """SparseViT as in the paper (512 x 512, depths 5/8/20/7, rates 8/4/2/1 and 2/1), 50.3 M params."""
    return SparseViT(**{**_PAPER_CONFIG, **kwargs})


@register_model
def sparsevit_tiny(**kwargs: Any) -> SparseViT:
    """Small SparseViT at 128 x 128 (the parity fixture's tiny config) for CPU tests and smoke runs."""
    return SparseViT(**{**_TINY_CONFIG, **kwargs})
