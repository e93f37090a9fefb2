"""NCL: pre-training-free image manipulation localization (ICCV 2023).

Zhou, Ma, Du, Alhammadi, Feng, "Pre-Training-Free Image Manipulation Localization through
Non-Mutually Exclusive Contrastive Learning", ICCV 2023, pp. 22346–22356 (arXiv 2309.14900);
official repository github.com/Knightzjz/NCL-IML (inference notebook only).

Provenance (spec ``ncl.md``; details in ``docs/models/ncl.md``):

* **Segmentation network — inferred, parity-tested.** The authors' code zip has the layout of
  jfzhang95/pytorch-deeplab-xception and their 238 MB checkpoint matches its DeepLabV3+
  (Chen et al., ECCV 2018) with a ResNet-101 backbone (He et al., CVPR 2016), output stride 16,
  multi-grid (1, 2, 4), ASPP rates 6/12/18 + image pooling, 2 classes: 59,339,426 parameters.
  Parameter names and the forward pass follow that code base exactly, so ``load_state_dict``
  accepts its state dicts; outputs match a run of that code within 1e-4 (``tests/test_ncl.py``).
  No ImageNet weights (the paper trains from scratch); initialisation as in that code base.
* **The paper's ideas, forgeloc's formulas.** Projection heads, patch labelling, the dual-branch
  contour switching, the contrastive and pivot-consistent losses are not published as code; their
  concrete form is forgeloc's reading of the paper, every choice behind an option
  (:class:`forgeloc.losses.contrastive.NCLLossConfig`).
* **Ours.** The dict interface, the batch-of-one handling of the ASPP image-pooling BatchNorm, the
  optional ImageNet initialisation for ablations, per-group learning-rate factors for the engine.

Outputs (see :mod:`forgeloc.models.base`): ``pred_mask`` = softmax(logits)[:, 1:2], the tampered
probability; ``logits`` = the **2-channel** (authentic, tampered) logit map at input resolution;
``features`` = the ASPP output (B, 256, H/16, W/16), the map the contrastive heads project. With a
mask: ``loss`` = 2-class pixel cross-entropy (+ the NCL terms in training mode, or in eval mode
when ``eval_aux_loss=True``); in that case also ``z_t``, ``z_a`` (normalised patch embeddings) and
``patch_labels``. Inference runs the segmentation path only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from forgeloc.io.state_dict import KeyReport, load_state_dict_file
from forgeloc.losses.contrastive import NCLLossConfig, ProjectionHead, compute_ncl_loss
from forgeloc.models.base import ForgeryModel
from forgeloc.models.registry import register_model

__all__ = ["ASPP", "NCL", "Bottleneck", "Decoder", "ResNetBackbone", "checkpoint_filter_fn", "load_pretrained", "ncl",
           "ncl_tiny"]

log = logging.getLogger(__name__)

RESNET101_URL = "https://download.pytorch.org/models/resnet101-5d3b4d8f.pth"
CHECKPOINT_URL = "https://drive.google.com/uc?id=1urqD-AqGiHSB8k3ruz2HJuu-mBxWqqf0"


# --------------------------------------------------------------------------------------------------
# Backbone: ResNet with output stride 16 and a multi-grid last stage (DeepLabV3+ variant)
# --------------------------------------------------------------------------------------------------
class Bottleneck(nn.Module):
    """ResNet bottleneck (1×1 → 3×3 → 1×1, expansion 4); the 3×3 conv carries stride and dilation."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


class ResNetBackbone(nn.Module):
    """ResNet feature extractor of DeepLabV3+: single 7×7 stem, stages 1–3, multi-grid stage 4.

    Output stride 16: strides (1, 2, 2, 1), dilations (1, 1, 1, 2); stage 4 has one block per
    ``multi_grid`` entry with dilation ``multi_grid[i] · 2`` (Chen et al. 2017, "Rethinking atrous
    convolution", §3.1). ``forward`` returns (stage-4 map at H/16, stage-1 map at H/4).
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 23, 3),
        multi_grid: Sequence[int] = (1, 2, 4),
        output_stride: int = 16,
        width: int = 64,
    ) -> None:
        super().__init__()
        if output_stride == 16:
            strides, dilations = (1, 2, 2, 1), (1, 1, 1, 2)
        elif output_stride == 8:
            strides, dilations = (1, 2, 1, 1), (1, 1, 2, 4)
        else:
            raise ValueError(f"output_stride must be 16 or 8, got {output_stride}")
        if len(layers) != 4 or layers[3] != len(multi_grid):
            raise ValueError(f"layers must have 4 entries, the last equal to len(multi_grid); got {layers}")
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_stage(width, [dilations[0]] * layers[0], strides[0])
        self.layer2 = self._make_stage(width * 2, [dilations[1]] * layers[1], strides[1])
        self.layer3 = self._make_stage(width * 4, [dilations[2]] * layers[2], strides[2])
        self.layer4 = self._make_stage(width * 8, [g * dilations[3] for g in multi_grid], strides[3])
        self.out_channels = width * 8 * Bottleneck.expansion
        self.low_level_channels = width * Bottleneck.expansion
        self._init_weights()

    def _make_stage(self, planes: int, block_dilations: Sequence[int], stride: int) -> nn.Sequential:
        out = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )
        blocks = [Bottleneck(self.inplanes, planes, stride, block_dilations[0], downsample)]
        self.inplanes = out
        blocks += [Bottleneck(out, planes, 1, d) for d in block_dilations[1:]]
        return nn.Sequential(*blocks)

    def _init_weights(self) -> None:
        # The reference draws conv weights from N(0, 2/n) with n = k·k·out_channels (fan-out).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low_level = self.layer1(x)
        x = self.layer4(self.layer3(self.layer2(low_level)))
        return x, low_level


# --------------------------------------------------------------------------------------------------
# ASPP and decoder
# --------------------------------------------------------------------------------------------------
def _init_head_module(module: nn.Module) -> None:
    # ASPP and decoder use Kaiming-normal (fan-in) convs in the reference; conv biases keep PyTorch's.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class PooledBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm for the 1×1 image-pooling branch, safe with a batch of one in training mode.

    After global pooling each channel holds one value per image, so with batch size 1 plain
    BatchNorm cannot compute batch statistics and raises. In that single case this layer
    normalises with its running statistics (as in eval mode) and leaves them unchanged; for any
    batch > 1 it is exactly ``nn.BatchNorm2d`` (same parameters and buffers). A forgeloc choice.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.numel() == x.shape[1]:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)


class ASPPBranch(nn.Module):
    """One atrous branch of ASPP: conv (1×1 or dilated 3×3, no bias) → BN → ReLU."""

    def __init__(self, in_channels: int, channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        padding = 0 if kernel_size == 1 else dilation
        self.atrous_conv = nn.Conv2d(
            in_channels, channels, kernel_size, padding=padding, dilation=dilation, bias=False
        )
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.atrous_conv(x)))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabV3, Chen et al. 2017): a 1×1 branch, three dilated
    3×3 branches and an image-pooling branch, concatenated and fused by 1×1 conv → BN → ReLU → dropout."""

    def __init__(
        self, in_channels: int, channels: int = 256, rates: Sequence[int] = (6, 12, 18), dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.aspp1 = ASPPBranch(in_channels, channels, 1, 1)
        self.aspp2 = ASPPBranch(in_channels, channels, 3, rates[0])
        self.aspp3 = ASPPBranch(in_channels, channels, 3, rates[1])
        self.aspp4 = ASPPBranch(in_channels, channels, 3, rates[2])
        self.global_avg_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, channels, 1, bias=False),
            PooledBatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.conv1 = nn.Conv2d(5 * channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        _init_head_module(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.global_avg_pool(x)
        # Bilinear upsampling of a 1×1 map is a broadcast; expand avoids materialising it twice.
        pooled = pooled.expand(-1, -1, x.shape[-2], x.shape[-1])
        x = torch.cat((self.aspp1(x), self.aspp2(x), self.aspp3(x), self.aspp4(x), pooled), dim=1)
        return self.dropout(self.relu(self.bn1(self.conv1(x))))


class Decoder(nn.Module):
    """DeepLabV3+ decoder: low-level features reduced to 48 channels, concatenated with the
    upsampled ASPP output, two 3×3 conv → BN → ReLU → dropout blocks, 1×1 classifier (with bias).

    ``last_conv`` indices (0 conv, 1 BN, 4 conv, 5 BN, 8 classifier) are the reference's key names.
    """

    def __init__(
        self,
        num_classes: int,
        low_level_in: int = 256,
        aspp_channels: int = 256,
        low_level_channels: int = 48,
        channels: int = 256,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(low_level_in, low_level_channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(low_level_channels)
        self.relu = nn.ReLU(inplace=True)
        self.last_conv = nn.Sequential(
            nn.Conv2d(aspp_channels + low_level_channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Conv2d(channels, num_classes, 1),
        )
        _init_head_module(self)

    def forward(self, x: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        low_level = self.relu(self.bn1(self.conv1(low_level)))
        x = F.interpolate(x, size=low_level.shape[-2:], mode="bilinear", align_corners=True)
        return self.last_conv(torch.cat((x, low_level), dim=1))


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------
class NCL(ForgeryModel):
    """NCL / CaCL-Net: DeepLabV3+ (ResNet-101, OS 16) trained with NCL's contrastive objective.

    Inference is the DeepLabV3+ segmentation path alone; the projection heads ``head_t`` / ``head_a``
    run only when a loss with the NCL terms is computed. See the module docstring for provenance.

    Args:
        layers: Bottleneck blocks per stage (ResNet-101: 3, 4, 23, 3; the last = len(multi_grid)).
        multi_grid: dilation multipliers of stage 4 (1, 2, 4).
        width: stem / first-stage width (64 for ResNet-101; smaller for the tiny configuration).
        output_stride: 16 (paper setting) or 8.
        aspp_channels, aspp_rates: ASPP width and dilation rates (256; 6, 12, 18 at OS 16).
        low_level_channels, decoder_channels: decoder widths (48, 256).
        input_size: side the model is fed (512, as the official notebook resizes to); ``None`` accepts
            any multiple of 16.
        ce_batch_average: divide the cross-entropy by the batch size as jfzhang95's trainer does
            (default False: plain mean over pixels, the fixture's ``F.cross_entropy``).
        eval_aux_loss: also compute the NCL terms in eval mode when a mask is given (default False:
            validation reports the segmentation loss only, and the heads stay idle).
        head_lr_scale: lr factor of ASPP, decoder and heads relative to the backbone (jfzhang95's 10×).
        **ncl_options: fields of :class:`~forgeloc.losses.contrastive.NCLLossConfig` (``tau``,
            ``variant``, ``pc_loss``, ``lambda_c``, ``lambda_pc``, ``patch_grid``, ``contour_eps``,
            ``switch_mode``, ``switch_every``, ``head_hidden``, ``embed_dim``).
    """

    size_divisor = 16
    num_classes = 2

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 23, 3),
        multi_grid: Sequence[int] = (1, 2, 4),
        width: int = 64,
        output_stride: int = 16,
        aspp_channels: int = 256,
        aspp_rates: Sequence[int] | None = None,
        low_level_channels: int = 48,
        decoder_channels: int = 256,
        input_size: int | None = 512,
        ce_batch_average: bool = False,
        eval_aux_loss: bool = False,
        head_lr_scale: float = 10.0,
        **ncl_options: Any,
    ) -> None:
        super().__init__()
        unknown = sorted(set(ncl_options) - set(NCLLossConfig.option_names()))
        if unknown:
            raise TypeError(f"unknown NCL option(s) {unknown}; NCL loss options: {NCLLossConfig.option_names()}")
        self.ncl_cfg = NCLLossConfig(**ncl_options)
        self.input_size = input_size
        self.size_divisor = output_stride
        self.ce_batch_average = bool(ce_batch_average)
        self.eval_aux_loss = bool(eval_aux_loss)
        self.head_lr_scale = float(head_lr_scale)
        if aspp_rates is None:
            aspp_rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)

        self.backbone = ResNetBackbone(layers, multi_grid, output_stride, width)
        self.aspp = ASPP(self.backbone.out_channels, aspp_channels, aspp_rates)
        self.decoder = Decoder(
            self.num_classes, self.backbone.low_level_channels, aspp_channels, low_level_channels, decoder_channels
        )
        self.feature_channels = aspp_channels
        hidden, dim = self.ncl_cfg.head_hidden, self.ncl_cfg.embed_dim
        self.head_t = ProjectionHead(aspp_channels, hidden, dim)
        self.head_a = ProjectionHead(aspp_channels, hidden, dim) if self.ncl_cfg.switch_mode == "dual" else None
        self._ncl_step = 0  # training steps seen, for switch_mode="alternate" (not checkpointed)

    @property
    def base_prefixes(self) -> tuple[str, ...]:
        return ("backbone.", "aspp.", "decoder.")

    def lr_scale(self, name: str) -> float:
        """Learning-rate factor per parameter: 1 for the backbone, ``head_lr_scale`` (10) for ASPP,
        decoder and projection heads (jfzhang95's ``get_1x/10x_lr_params``; heads are ours)."""
        return 1.0 if name.startswith("backbone.") else self.head_lr_scale

    # ---------------------------------------------------------------------------------------------
    def segmentation_loss(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """2-class pixel cross-entropy (jfzhang95 ``SegmentationLosses('ce')``; ignore index 255 =
        padding when the batch has a ``shape_mask``)."""
        target = (batch["mask"] > 0.5).squeeze(1).long()
        shape_mask = batch.get("shape_mask")
        if shape_mask is not None:
            target = target.masked_fill(shape_mask.squeeze(1) < 0.5, 255)
        loss = F.cross_entropy(logits.float(), target, ignore_index=255)
        return loss / logits.shape[0] if self.ce_batch_average else loss

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        image = self.require_image(batch)
        self.check_input_size(image)
        x, low_level = self.backbone(image)
        features = self.aspp(x)
        logits = self.decoder(features, low_level)
        logits = F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=True)
        # softmax over two channels, tampered channel: sigmoid of the logit difference is the same value.
        out: dict[str, Any] = {
            "pred_mask": torch.sigmoid(logits[:, 1:2] - logits[:, 0:1]),
            "logits": logits,
            "features": features,
        }
        if batch.get("mask") is None:
            return out
        terms = {"seg": self.segmentation_loss(logits, batch)}
        if self.training or self.eval_aux_loss:
            ncl = compute_ncl_loss(
                features, batch["mask"], self.head_t, self.head_a, self.ncl_cfg, self._ncl_step,
                batch.get("shape_mask"),
            )
            if self.training:
                self._ncl_step += 1
            terms.update(ncl["loss_terms"])
            out.update(z_t=ncl["z_t"], z_a=ncl["z_a"], patch_labels=ncl["patch_labels"])
        out["loss"] = sum(terms.values())
        out["loss_terms"] = terms
        return out


# --------------------------------------------------------------------------------------------------
# Weights from files
# --------------------------------------------------------------------------------------------------
def load_pretrained(model: NCL, pretrained_path: str | Path | None = None) -> None:
    """Initialise the backbone from a local torchvision ResNet checkpoint — *not* NCL (the paper
    uses no pre-training); for ablations only. ``None``: the random init, said so in the log.

    Every backbone tensor must be in the file with its shape (``num_batches_tracked`` counters may
    be absent); the file's other keys (torchvision's classifier) are ignored.
    """
    if pretrained_path is None:
        log.info("NCL: random initialisation (the paper trains without any pre-training)")
        return
    path = Path(pretrained_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ImageNet ResNet weights not found at {path}. NCL itself uses none; for an ablation, "
            f"download torchvision's resnet101-5d3b4d8f.pth from {RESNET101_URL} and pass its local path"
        )
    sd = load_state_dict_file(path)
    own = model.backbone.state_dict()
    report = KeyReport.compare(sd, own)
    report.missing = [k for k in report.missing if not k.endswith("num_batches_tracked")]
    report.unexpected = []  # torchvision's classifier: not part of the backbone
    report.check(path, "the NCL ResNet backbone", strict=True)
    model.backbone.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    log.info("NCL: backbone initialised from %s (an ablation: the paper uses no pre-training)", path)


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: NCL) -> dict[str, torch.Tensor]:
    """Bring a checkpoint (ours or the authors') onto ``model``'s keys.

    The segmentation path (``backbone.*``, ``aspp.*``, ``decoder.*``) must be complete: it is
    passed through untouched so that strict loading reports any gap. Our heads are taken from
    the file when present; the authors' head names are unknown, so when the file has none the
    heads keep their current (initial) values, and every key this model does not have
    (e.g. the authors' own heads) is dropped with a logged list. ``num_batches_tracked``
    counters absent from old files are filled in (they do not affect the output).
    """
    sd = dict(state_dict)
    own = model.state_dict()
    extra = sorted(k for k in sd if k not in own)
    if extra:
        log.warning("NCL: dropping %d key(s) this model does not have: %s", len(extra), extra[:20])
        for k in extra:
            del sd[k]
    filled_heads = [k for k in own if k.startswith(("head_t.", "head_a.")) and k not in sd]
    for k in filled_heads:
        sd[k] = own[k]
    if filled_heads:
        log.info("NCL: the checkpoint has no projection heads; %d head tensors keep their initial values",
                 len(filled_heads))
    for k in own:
        if k.endswith("num_batches_tracked") and k not in sd and k.startswith(model.base_prefixes):
            sd[k] = own[k]
    return sd


# --------------------------------------------------------------------------------------------------
# Registered configurations
# --------------------------------------------------------------------------------------------------
@register_model
def ncl(**kwargs: Any) -> NCL:
    """NCL as in the paper: DeepLabV3+ ResNet-101, OS 16, 512×512, no pre-training (59.34 M + heads)."""
    return NCL(**kwargs)


@register_model
def ncl_tiny(**kwargs: Any) -> NCL:
    """Same code, one bottleneck per stage, width 8, ASPP/decoder 32–64 channels, 128×128 — for CPU tests."""
    cfg: dict[str, Any] = dict(
        layers=(1, 1, 1, 1),
        multi_grid=(1,),
        width=8,
        aspp_channels=64,
        low_level_channels=16,
        decoder_channels=32,
        input_size=128,
        head_hidden=64,
        embed_dim=32,
    )
    cfg.update(kwargs)
    return NCL(**cfg)
