"""NCL's patch-level contrastive losses, usable on any feature map.

Zhou, Ma, Du, Alhammadi, Feng, "Pre-Training-Free Image Manipulation Localization through
Non-Mutually Exclusive Contrastive Learning", ICCV 2023 (arXiv 2309.14900).

What is the paper's and what is ours
------------------------------------
The authors published no training or loss code (spec ``ncl.md`` §0), only the paper. From the paper
(its abstract) come the *ideas*:

* image patches fall into three categories — **tampered** (all pixels tampered), **authentic** (none)
  and **contour** (both); the first two are mutually exclusive, contour patches are not;
* a **dual-branch pivot structure** "constantly switches the role of contour patches between
  positives and negatives" during training;
* a **pivot-consistent loss** prevents the "spatial corruption" the switching would cause.

Everything concrete below is a forgeloc choice, each behind an option, documented in
``docs/models/ncl.md`` and tested against hand-checkable vectors (``shared/parity/ncl``):

* patches = cells of a ``patch_grid`` over the feature map, labelled from the mask by the strict rule
  (fraction ``r`` of tampered pixels: ``r = 0`` authentic, ``r = 1`` tampered, else contour;
  ``contour_eps`` widens the pure classes);
* projection heads: 1×1 conv → BN → ReLU → 1×1 conv (CFL-Net style), one per branch, L2-normalised;
* branch **T** treats contour patches as tampered, branch **A** as authentic (``switch_mode="dual"``,
  both in every step), or one head whose contour role alternates between steps
  (``switch_mode="alternate"``);
* contrastive loss = supervised contrastive loss (Khosla et al., NeurIPS 2020, eq. 2 "L_out"),
  ``variant="supcon"``, or the CFL-Net denominator (Niloy et al., WACV 2023), ``variant="cfl"``;
  computed per image over all patches (no sampling), averaged over images that contain both classes;
* pivot-consistent loss: candidate ``"A"`` = mean over contour patches of 1 − cos(z_T, z_A),
  candidate ``"B"`` = mean squared difference of the normalised embeddings;
* total ``λ_c (L_T + L_A) + λ_pc L_pc`` with λ_c = λ_pc = 1 and τ = 0.1.

Label codes used throughout: 0 authentic, 1 tampered, 2 contour, -1 ignored (no valid pixel).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AUTHENTIC",
    "CONTOUR",
    "IGNORE",
    "TAMPERED",
    "NCLLoss",
    "NCLLossConfig",
    "ProjectionHead",
    "compute_ncl_loss",
    "embed_patches",
    "patch_fractions",
    "patch_labels",
    "pivot_consistency_loss",
    "supervised_contrastive_loss",
    "switch_contour",
]

AUTHENTIC, TAMPERED, CONTOUR, IGNORE = 0, 1, 2, -1

# Stands in for -inf in masked similarity rows: exp() of it is exactly 0, yet a fully masked row stays
# finite, so no NaN reaches the backward pass (a -inf row would give exp(-inf - -inf) = NaN there).
_MASKED = -1e9

GridSpec = int | tuple[int, int] | None


# --------------------------------------------------------------------------------------------------
# Patch labelling
# --------------------------------------------------------------------------------------------------
def _as_grid(grid: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(grid, int):
        return (grid, grid)
    gh, gw = grid
    return (int(gh), int(gw))


def _mask_bchw(mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Bring a (H, W), (B, H, W) or (B, 1, H, W) mask to (B, 1, H, W); also return its original ndim."""
    ndim = mask.ndim
    if ndim == 2:
        mask = mask[None, None]
    elif ndim == 3:
        mask = mask[:, None]
    elif ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be (H, W), (B, H, W) or (B, 1, H, W), got {tuple(mask.shape)}")
    return mask, ndim


def patch_fractions(
    mask: torch.Tensor, grid: int | tuple[int, int], valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Fraction of tampered pixels in each cell of a ``grid`` laid over ``mask``.

    Args:
        mask: (H, W), (B, H, W) or (B, 1, H, W); binarised at 0.5 first (so a mask resized with
            interpolation still gives exact fractions).
        grid: cells per side (int) or (rows, cols). Sizes need not divide evenly: cells then follow
            ``adaptive_avg_pool2d``'s split.
        valid: optional map of the same shape, 1 = real pixel, 0 = padding; fractions are taken over
            valid pixels only and are NaN in cells without any.

    Returns:
        float64 fractions of shape (rows, cols) for a 2-d mask, else (B, rows, cols).
    """
    m, ndim = _mask_bchw(mask)
    # float64: sums of up to millions of 0/1 values stay exact, so r == 1 is decided exactly.
    m = (m > 0.5).double()
    size = _as_grid(grid)
    if valid is None:
        frac = F.adaptive_avg_pool2d(m, size)
    else:
        v, _ = _mask_bchw(valid)
        v = (v > 0.5).double()
        num = F.adaptive_avg_pool2d(m * v, size)
        den = F.adaptive_avg_pool2d(v, size)
        frac = torch.where(den > 0, num / den.clamp_min(1e-12), torch.full_like(num, math.nan))
    frac = frac[:, 0]
    return frac[0] if ndim == 2 else frac


def patch_labels(
    mask: torch.Tensor,
    grid: int | tuple[int, int],
    contour_eps: float = 0.0,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Label each grid cell authentic (0), tampered (1) or contour (2); -1 where no pixel is valid.

    Rule (NCL's three patch categories; thresholds are forgeloc's, spec §2): with ``r`` the
    tampered fraction of a cell, ``r <= contour_eps`` → authentic, ``r >= 1 - contour_eps`` →
    tampered, otherwise contour. ``contour_eps = 0`` is the strict rule (contour = any mixture).
    Output shape as :func:`patch_fractions`, dtype int64.
    """
    if not 0.0 <= contour_eps < 0.5:
        raise ValueError(f"contour_eps must be in [0, 0.5), got {contour_eps}")
    frac = patch_fractions(mask, grid, valid)
    labels = torch.full(frac.shape, CONTOUR, dtype=torch.long, device=frac.device)
    labels[frac <= contour_eps] = AUTHENTIC
    labels[frac >= 1.0 - contour_eps] = TAMPERED
    labels[torch.isnan(frac)] = IGNORE
    return labels


_CONTOUR_ROLES = {"tampered": TAMPERED, "authentic": AUTHENTIC, "own": CONTOUR, "drop": IGNORE}


def switch_contour(labels: torch.Tensor, role: str) -> torch.Tensor:
    """Give contour patches a role: ``tampered`` (branch T), ``authentic`` (branch A), ``own``
    (a third class) or ``drop`` (ignored: the ablation the paper argues against)."""
    if role not in _CONTOUR_ROLES:
        raise ValueError(f"unknown contour role {role!r}; choose from {sorted(_CONTOUR_ROLES)}")
    return torch.where(labels == CONTOUR, torch.full_like(labels, _CONTOUR_ROLES[role]), labels)


# --------------------------------------------------------------------------------------------------
# Losses on embeddings
# --------------------------------------------------------------------------------------------------
def _as_rows(z: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """(N, D) / (B, N, D) / (B, D, h, w) embeddings and matching labels → (B, N, D), (B, N)."""
    label_shape = tuple(labels.shape)
    if z.ndim == 4:
        z = z.flatten(2).transpose(1, 2)
    elif z.ndim == 2:
        z = z[None]
    elif z.ndim != 3:
        raise ValueError(f"embeddings must be (N, D), (B, N, D) or (B, D, h, w), got {tuple(z.shape)}")
    labels = labels.reshape(z.shape[0], -1)
    if labels.shape[1] != z.shape[1]:
        raise ValueError(f"{labels.shape[1]} labels per image for {z.shape[1]} embeddings")
    if not z.is_floating_point() or z.dtype in (torch.float16, torch.bfloat16):
        z = z.float()  # the log-sum-exp over ~1000 patches at τ = 0.1 needs fp32 range and precision
    return z, labels.to(z.device), label_shape


def supervised_contrastive_loss(
    z: torch.Tensor,
    labels: torch.Tensor,
    tau: float = 0.1,
    variant: str = "supcon",
    reduction: str = "mean",
) -> torch.Tensor:
    """Supervised contrastive loss over the patches of each image, batched over images.

    With ẑ the L2-normalised embeddings, s_ij = ẑ_i·ẑ_j / τ, P(i) = {p ≠ i: y_p = y_i} and
    N(i) = {n: y_n ≠ y_i} (labels < 0 take no part)::

        supcon (Khosla et al. 2020, L_out):  L_i = −1/|P(i)| Σ_p log( e^{s_ip} / Σ_{a≠i} e^{s_ia} )
        cfl    (CFL-Net, Niloy et al. 2023): L_i = −1/|P(i)| Σ_p log( e^{s_ip} / (e^{s_ip} + Σ_n e^{s_in}) )

    An anchor without positives is skipped; an image with fewer than two classes is skipped (there
    are no negatives). ``reduction="mean"``: mean over kept anchors of each image, then over kept
    images (0 with a graph when none is kept); ``"none"``: per-anchor losses shaped like ``labels``,
    NaN where skipped.

    Args:
        z: (N, D), (B, N, D) or (B, D, h, w) embeddings (normalised here).
        labels: integer labels with N (or h·w) entries per image; any integers, < 0 = ignore.
        tau: temperature.
        variant: ``"supcon"`` (forgeloc default) or ``"cfl"``.
    """
    if variant not in ("supcon", "cfl"):
        raise ValueError(f"variant must be 'supcon' or 'cfl', got {variant!r}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    z, y, label_shape = _as_rows(z, labels)
    z = F.normalize(z, dim=-1)
    sim = torch.bmm(z, z.transpose(1, 2)) / tau  # (B, N, N)

    # Masks are built once, in as few N×N passes as possible: this runs on every training step.
    valid = y >= 0
    pair = valid[:, :, None] & valid[:, None, :]
    pair.diagonal(dim1=1, dim2=2).fill_(False)  # no anchor is its own positive or in its denominator
    pos = pair & (y[:, :, None] == y[:, None, :])
    pos_f = pos.to(sim.dtype)
    n_pos = pos_f.sum(-1)

    if variant == "supcon":
        # Σ_p log(e^{s_ip} / D_i) = Σ_p s_ip − |P(i)|·log D_i: no N×N log-probability tensor needed.
        log_denom = torch.logsumexp(sim.masked_fill(~pair, _MASKED), dim=-1)
        sum_log_prob = (sim * pos_f).sum(-1) - n_pos * log_denom
    else:
        log_neg = torch.logsumexp(sim.masked_fill(~(pair ^ pos), _MASKED), dim=-1, keepdim=True)
        sum_log_prob = ((sim - torch.logaddexp(sim, log_neg)) * pos_f).sum(-1)
    per_anchor = -sum_log_prob / n_pos.clamp_min(1)

    # An image takes part when its valid patches hold at least two classes (so negatives exist).
    big = torch.iinfo(y.dtype).max
    y_min = torch.where(valid, y, torch.full_like(y, big)).amin(-1)
    y_max = torch.where(valid, y, torch.full_like(y, -big)).amax(-1)
    keep = valid & (n_pos > 0) & (y_max > y_min)[:, None]

    if reduction == "none":
        out = torch.where(keep, per_anchor, torch.full_like(per_anchor, math.nan))
        return out.reshape(label_shape)
    kept = keep.sum(-1)
    per_image = torch.where(keep, per_anchor, torch.zeros_like(per_anchor)).sum(-1) / kept.clamp_min(1)
    has = kept > 0
    if not bool(has.any()):
        return sim.sum() * 0.0
    return per_image[has].mean()


def pivot_consistency_loss(
    z_t: torch.Tensor, z_a: torch.Tensor, labels: torch.Tensor, candidate: str = "A"
) -> torch.Tensor:
    """Candidate pivot-consistent losses between the two branches' embeddings (formula not published).

    * ``"A"`` (forgeloc default): mean over contour patches of ``1 − cos(z_T, z_A)`` — per image,
      then over images that have contour patches (0 with a graph when none has);
    * ``"B"``: mean over all valid patches and channels of ``(ẑ_T − ẑ_A)²`` on L2-normalised rows.

    Args:
        z_t, z_a: embeddings of the two branches, same shape ((N, D), (B, N, D) or (B, D, h, w)).
        labels: the *unswitched* labels (2 = contour, < 0 ignored).
    """
    if z_t.shape != z_a.shape:
        raise ValueError(f"branch embeddings differ in shape: {tuple(z_t.shape)} vs {tuple(z_a.shape)}")
    zt, y, _ = _as_rows(z_t, labels)
    za, _, _ = _as_rows(z_a, labels)
    zt = F.normalize(zt, dim=-1)
    za = F.normalize(za, dim=-1)
    if candidate == "A":
        contour = y == CONTOUR
        dist = 1.0 - (zt * za).sum(-1)
        count = contour.sum(-1)
        per_image = torch.where(contour, dist, torch.zeros_like(dist)).sum(-1) / count.clamp_min(1)
        has = count > 0
        if not bool(has.any()):
            return dist.sum() * 0.0
        return per_image[has].mean()
    if candidate == "B":
        valid = (y >= 0)[..., None].to(zt.dtype)
        sq = (zt - za).pow(2) * valid
        return sq.sum() / (valid.sum() * zt.shape[-1]).clamp_min(1)
    raise ValueError(f"candidate must be 'A' or 'B', got {candidate!r}")


# --------------------------------------------------------------------------------------------------
# Heads, configuration, and the whole NCL objective
# --------------------------------------------------------------------------------------------------
class ProjectionHead(nn.Sequential):
    """Per-branch projection (forgeloc default, spec §3): 1×1 conv → BN → ReLU → 1×1 conv.

    Keys: ``0.weight`` (C→hidden, no bias), ``1.*`` (BatchNorm), ``3.weight`` / ``3.bias`` (hidden→dim).
    """

    def __init__(self, in_channels: int, hidden: int = 256, dim: int = 128) -> None:
        super().__init__(
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, dim, 1),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)  # as DeepLab's ASPP / decoder convs
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


@dataclass
class NCLLossConfig:
    """Options of the NCL objective. Defaults: spec ``ncl.md`` §2–§5 (all [UNVERIFIED] but λ's role).

    Attributes:
        tau: temperature of the contrastive loss.
        variant: ``"supcon"`` or ``"cfl"`` (see :func:`supervised_contrastive_loss`).
        pc_loss: pivot-consistent candidate ``"A"``, ``"B"`` or ``None`` (off).
        lambda_c: weight of each branch's contrastive loss.
        lambda_pc: weight of the pivot-consistent loss.
        patch_grid: cells per side; ``None`` = one patch per feature-map cell (32×32 at 512², stride 16).
        contour_eps: tolerance of the patch labelling (0 = strict).
        switch_mode: ``"dual"`` (two heads, contour→T in one, →A in the other, every step) or
            ``"alternate"`` (one head, contour role flips every ``switch_every`` training steps;
            no pivot loss: it needs two branches).
        switch_every: training steps between flips in ``"alternate"`` mode.
        head_hidden: hidden width of the projection heads.
        embed_dim: embedding dimension.
    """

    tau: float = 0.1
    variant: str = "supcon"
    pc_loss: str | None = "A"
    lambda_c: float = 1.0
    lambda_pc: float = 1.0
    patch_grid: int | None = None
    contour_eps: float = 0.0
    switch_mode: str = "dual"
    switch_every: int = 1
    head_hidden: int = 256
    embed_dim: int = 128

    def __post_init__(self) -> None:
        if isinstance(self.pc_loss, str) and self.pc_loss.lower() in ("none", "null", ""):
            self.pc_loss = None
        if self.variant not in ("supcon", "cfl"):
            raise ValueError(f"variant must be 'supcon' or 'cfl', got {self.variant!r}")
        if self.pc_loss not in ("A", "B", None):
            raise ValueError(f"pc_loss must be 'A', 'B' or None, got {self.pc_loss!r}")
        if self.switch_mode not in ("dual", "alternate"):
            raise ValueError(f"switch_mode must be 'dual' or 'alternate', got {self.switch_mode!r}")
        if self.switch_mode == "alternate" and self.pc_loss is not None:
            raise ValueError(
                "switch_mode='alternate' uses a single branch, so the pivot-consistent loss (which compares "
                "two branches) is undefined; set pc_loss=None"
            )
        if self.tau <= 0 or self.switch_every < 1:
            raise ValueError("tau must be > 0 and switch_every >= 1")
        if not 0.0 <= self.contour_eps < 0.5:
            raise ValueError(f"contour_eps must be in [0, 0.5), got {self.contour_eps}")

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def embed_patches(z: torch.Tensor, grid: GridSpec) -> torch.Tensor:
    """Average projected features inside each patch cell (identity when the grid is the feature
    grid) and L2-normalise along channels: (B, D, h, w) → (B, D, gh, gw)."""
    if grid is not None and _as_grid(grid) != tuple(z.shape[-2:]):
        z = F.adaptive_avg_pool2d(z, _as_grid(grid))
    return F.normalize(z, dim=1)


def compute_ncl_loss(
    features: torch.Tensor,
    mask: torch.Tensor,
    head_t: nn.Module,
    head_a: nn.Module | None,
    cfg: NCLLossConfig,
    step: int = 0,
    valid: torch.Tensor | None = None,
) -> dict[str, Any]:
    """NCL's contrastive objective on one feature map (shared by :class:`NCLLoss` and the NCL model).

    Returns ``loss`` (weighted sum), ``loss_terms`` (already weighted: ``con_t``, ``con_a``, ``pc`` in
    dual mode; ``con`` in alternate mode), ``z_t`` / ``z_a`` (B, D, g, g) normalised embeddings
    (``z_a`` is None in alternate mode), and ``patch_labels`` (B, g, g; 0/1/2, -1 ignored).
    """
    grid = cfg.patch_grid if cfg.patch_grid is not None else tuple(features.shape[-2:])
    labels = patch_labels(mask, grid, cfg.contour_eps, valid).to(features.device)
    # The objective is computed in fp32 even under autocast (exp/log-sum-exp over ~1000 patches).
    with torch.autocast(device_type=features.device.type, enabled=False):
        feats = features.float()
        z_t = embed_patches(head_t(feats), grid)
        terms: dict[str, torch.Tensor] = {}
        z_a = None
        if cfg.switch_mode == "dual":
            if head_a is None:
                raise ValueError("switch_mode='dual' needs two projection heads")
            z_a = embed_patches(head_a(feats), grid)
            terms["con_t"] = cfg.lambda_c * supervised_contrastive_loss(
                z_t, switch_contour(labels, "tampered"), cfg.tau, cfg.variant
            )
            terms["con_a"] = cfg.lambda_c * supervised_contrastive_loss(
                z_a, switch_contour(labels, "authentic"), cfg.tau, cfg.variant
            )
            if cfg.pc_loss is not None:
                terms["pc"] = cfg.lambda_pc * pivot_consistency_loss(z_t, z_a, labels, cfg.pc_loss)
        else:
            role = "tampered" if (step // cfg.switch_every) % 2 == 0 else "authentic"
            terms["con"] = cfg.lambda_c * supervised_contrastive_loss(
                z_t, switch_contour(labels, role), cfg.tau, cfg.variant
            )
    loss = sum(terms.values())
    return {"loss": loss, "loss_terms": terms, "z_t": z_t, "z_a": z_a, "patch_labels": labels}


class NCLLoss(nn.Module):
    """NCL's two projection heads and contrastive objective, for any (B, C, h, w) feature map.

    ``forward(features, mask, valid=None)`` returns the dict of :func:`compute_ncl_loss`. In
    ``"alternate"`` mode there is only ``head_t`` and the contour role flips every ``switch_every``
    calls made in training mode (the counter is not saved in checkpoints).

    Args:
        in_channels: channels of the feature map.
        **options: fields of :class:`NCLLossConfig`.
    """

    def __init__(self, in_channels: int, **options: Any) -> None:
        super().__init__()
        unknown = sorted(set(options) - set(NCLLossConfig.option_names()))
        if unknown:
            raise TypeError(f"unknown NCL loss option(s) {unknown}; options: {NCLLossConfig.option_names()}")
        self.cfg = NCLLossConfig(**options)
        self.in_channels = int(in_channels)
        self.head_t = ProjectionHead(in_channels, self.cfg.head_hidden, self.cfg.embed_dim)
        self.head_a = (
            ProjectionHead(in_channels, self.cfg.head_hidden, self.cfg.embed_dim)
            if self.cfg.switch_mode == "dual"
            else None
        )
        self.step = 0

    def forward(
        self, features: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor | None = None
    ) -> dict[str, Any]:
        out = compute_ncl_loss(features, mask, self.head_t, self.head_a, self.cfg, self.step, valid)
        if self.training:
            self.step += 1
        return out

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.cfg.to_dict().items())
