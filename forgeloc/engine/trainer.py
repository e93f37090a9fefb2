"""The training loop. It knows nothing about a particular model: it only uses the contract of
:mod:`forgeloc.models.base` (a batch dict in; ``loss``, ``loss_terms`` and ``pred_mask`` out).

Single process: ``forgeloc train --config C``. Several GPUs / nodes: the same command under
``torchrun``; DDP, distributed samplers, synced metrics and rank-0-only writing follow from the
launcher's environment.

Exact resume: every epoch's randomness is a pure function of (seed, epoch, rank) — the sampler's
permutation, each sample's augmentation (seeded by the dataset from seed/epoch/index) and the
global torch RNG (re-seeded at the start of each epoch for dropout / drop-path). A checkpoint is
written only at the end of an epoch, completely or not at all, so ``--resume`` restarts the
interrupted epoch from the last complete checkpoint and, in deterministic mode on the CPU, ends
with bit-identical weights.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from forgeloc.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from forgeloc.engine.checkpointing import (
    BEST_DIR,
    CHECKPOINT_DIR,
    complete_checkpoints,
    copy_as_best,
    is_complete,
    load_resume_checkpoint,
    remove_stale_temporaries,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unwrap,
)
from forgeloc.engine.config import Config
from forgeloc.engine.data import build_eval_loader, build_train_dataset, build_train_loader
from forgeloc.engine.distributed import DistInfo, barrier, cleanup_distributed, init_distributed
from forgeloc.engine.evaluate import evaluate
from forgeloc.engine.logger import RunLogger, console, metrics_table, setup_logging, train_progress
from forgeloc.engine.optim import build_optimizer, learning_rate, set_learning_rate
from forgeloc.engine.runtime import autocast_context, move_batch
from forgeloc.io import atomic_write
from forgeloc.losses import unwrap_aux_loss, wrap_with_aux_loss
from forgeloc.models.factory import create_model, load_weights
from forgeloc.version import __version__

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished run leaves behind."""

    output_dir: Path
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)
    final_metrics: dict[str, dict[str, Any]] = field(default_factory=dict)


def enable_determinism() -> None:
    """Deterministic kernels (bit-identical reruns on the CPU; on CUDA as far as PyTorch allows)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, dtype=np.uint64)[0] % 2**63)


def build_model(cfg: Config) -> nn.Module:
    """The configured model, with its auxiliary loss and initial weights when asked for."""
    model = create_model(cfg.model.name, pretrained=cfg.model.pretrained, **cfg.model.kwargs)
    if cfg.model.init_checkpoint:
        load_weights(model, cfg.model.init_checkpoint, strict=True)
        log.info("initialised %s from %s", cfg.model.name, cfg.model.init_checkpoint)
    if cfg.model.aux_loss:
        model = wrap_with_aux_loss(model, dict(cfg.model.aux_loss))
    return model


def model_input_size(model: nn.Module, cfg: Config) -> int:
    """The square input size to train and evaluate at; a clear error if model and config disagree."""
    net = unwrap_aux_loss(model)
    required = getattr(net, "input_size", None)
    size = cfg.data.input_size
    if required is not None and required != size:
        raise ValueError(
            f"model {cfg.model.name} takes {required}x{required} inputs but data.input_size is {size}; "
            f"set data.input_size={required}"
        )
    divisor = getattr(net, "size_divisor", 1)
    if size % divisor:
        raise ValueError(f"data.input_size={size} must be a multiple of {divisor} for {cfg.model.name}")
    return size


def resume_output_dir(resume: str | Path, configured: str | Path) -> Path:
    """The folder a resumed run writes into: the run that ``--resume`` points at.

    ``resume`` is a run folder (``RUN``) or one of its checkpoints (``RUN/checkpoints/epoch_N``):
    the run continues in ``RUN``, whatever output folder its config names. A copied or renamed
    run folder therefore continues in the copy, never in the folder it was copied from. A
    checkpoint folder outside a run continues into ``configured`` (``train.output_dir``), unless
    that folder already holds another run's checkpoints.
    """
    resume = Path(resume).expanduser()
    if not is_complete(resume):
        return resume
    if resume.parent.name == CHECKPOINT_DIR:
        return resume.parent.parent
    out = Path(configured).expanduser()
    if complete_checkpoints(out):
        raise ValueError(
            f"--resume {resume} is a checkpoint outside a run folder and train.output_dir={configured} already "
            "holds another run's checkpoints; set train.output_dir to a new folder"
        )
    return out


def inference_config(cfg: Config, model: nn.Module, size: int, epoch: int, metrics: dict | None) -> dict[str, Any]:
    """``config.json`` of a checkpoint: everything ``forgeloc.load`` needs to predict."""
    inner = unwrap_aux_loss(unwrap(model))
    return {
        "format": "forgeloc-checkpoint",
        "format_version": 1,
        "forgeloc_version": __version__,
        "model": cfg.model.name,
        "model_kwargs": dict(getattr(inner, "model_kwargs", cfg.model.kwargs)),
        "aux_loss": cfg.model.aux_loss,
        "input": {"mode": cfg.data.input_mode, "size": size},
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "threshold": cfg.eval.threshold,
        "image_score": cfg.eval.image_score,
        "epoch": epoch,
        "metrics": metrics or {},
        "train_config": cfg.to_dict(),
        **({"card": card} if (card := training_card(cfg, epoch, metrics)) else {}),
    }


def is_synthetic_set(path: str | os.PathLike) -> bool:
    """Whether a dataset (its JSON list or folder) was made by ``forgeloc synth``: its folder holds
    the manifest the generator writes."""
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    try:
        return json.loads((folder / "manifest.json").read_text()).get("generator") == "forgeloc.synth"
    except (OSError, ValueError, AttributeError):
        return False


def _validation_summary(name: str, result: dict[str, Any]) -> str:
    f1, n = result.get("pixel_f1"), result.get("n_images")
    shown = f"{f1:.2f}" if isinstance(f1, (int, float)) and math.isfinite(f1) else "undefined"
    return f"pixel F1 {shown} on {name}" + (f" ({int(n)} images)" if isinstance(n, (int, float)) else "")


def training_card(cfg: Config, epoch: int, metrics: dict[str, dict[str, Any]] | None) -> dict[str, Any] | None:
    """The model card of a checkpoint (``config.json["card"]``, the title and headline every output
    shows), written from the run's own evaluation of this checkpoint; ``None`` when it was not
    evaluated (it is then shown as an unvalidated model). The headline says what the number is:
    a validation set made by ``forgeloc synth`` is synthetic, not a real-photo number; any other is
    the run's own choice of validation set, not an independent benchmark."""
    if not metrics:
        return None
    synthetic = all(is_synthetic_set(cfg.data.test[name]) for name in metrics if name in cfg.data.test)
    caveat = ("synthetic: not a real-photo number" if synthetic
              else "the run's own validation set, not an independent benchmark")
    trained_on = ", ".join(d.name or Path(d.path).stem for d in cfg.data.train) or "no recorded data"
    return {
        "title": f"{cfg.model.name} (forgeloc train)",
        "headline": f"trained {epoch + 1} epoch(s) on {trained_on}; validation "
                    f"{', '.join(_validation_summary(n, r) for n, r in metrics.items())} ({caveat})",
        "doc": "config.json: metrics (every validation number of this checkpoint); the run's log.jsonl",
        "validation": {n: {k: r[k] for k in ("pixel_f1", "pixel_auc", "image_auc", "n_images") if k in r}
                       for n, r in metrics.items()},
        "synthetic_validation": synthetic,
    }


def _denormalize(image: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).view(1, 3, 1, 1)
    return (image.float() * std + mean).clamp(0, 1)


@dataclass
class _Progress:
    """Where a run stands between epochs (restored from a checkpoint on ``--resume``)."""

    start_epoch: int = 0
    best_value: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    last_ckpt: Path | None = None
    best_ckpt: Path | None = None
    final_metrics: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class _Data:
    """The training data of a run and the test sets evaluated after epochs."""

    dataset: Any
    loader: Any
    sampler: Any
    steps_per_epoch: int
    test_loaders: dict[str, Any]


@dataclass
class _Run:
    """What every epoch of one run works with."""

    out_dir: Path
    model: nn.Module
    train_model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    size: int
    data: _Data
    info: DistInfo
    log: RunLogger
    progress: _Progress


class Trainer:
    """Runs a :class:`~forgeloc.engine.config.Config` to completion (see the module docstring)."""

    def __init__(self, cfg: Config, resume: str | Path | None = None, device: str | None = None) -> None:
        self.cfg = cfg
        self.resume = Path(resume) if resume else None
        self.device_request = device

    # ---------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        info = init_distributed(self.device_request)
        try:
            return self._fit(info)
        finally:
            cleanup_distributed()

    def _fit(self, info: DistInfo) -> TrainResult:
        setup_logging(enabled=info.is_main)
        out_dir = self._settle_config(info)
        cfg = self.cfg
        if cfg.train.deterministic:
            enable_determinism()
        torch.manual_seed(cfg.train.seed + info.rank)
        np.random.seed((cfg.train.seed + info.rank) % 2**32)

        model = build_model(cfg)
        size = model_input_size(model, cfg)
        model.to(info.device)
        if cfg.train.channels_last:
            model.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(model, cfg.optim)
        scaler = self._grad_scaler(info)
        progress = self._restore(model, optimizer, scaler)
        if progress.best_epoch is not None:  # a resumed run: its best checkpoint is already saved
            progress.best_ckpt = out_dir / BEST_DIR
        train_model = self._wrap_for_training(model, info)
        data = self._build_data(size, info)
        # Only now, with the checkpoint read and the data found, is anything written into the run.
        if info.is_main:
            self._start_run_folder(out_dir, model, data, info)
        run = _Run(out_dir, model, train_model, optimizer, scaler, size, data, info,
                   RunLogger(out_dir, enabled=info.is_main, tensorboard=cfg.train.tensorboard), progress)
        for epoch in range(progress.start_epoch, cfg.train.epochs):
            self._run_epoch(run, epoch)
        run.log.close()
        if info.is_main and progress.final_metrics:
            console.print(metrics_table(progress.final_metrics, title=f"{cfg.model.name} — final evaluation"))
        return TrainResult(out_dir, progress.last_ckpt, progress.best_ckpt, progress.history, progress.final_metrics)

    def _settle_config(self, info: DistInfo) -> Path:
        """The run folder (a resumed run continues where ``--resume`` points); ``self.cfg`` becomes
        the config the run records, with that folder and absolute paths."""
        cfg = self.cfg
        out_dir = Path(cfg.train.output_dir).expanduser()
        if self.resume is not None:
            out_dir = resume_output_dir(self.resume, cfg.train.output_dir)
            if Path(cfg.train.output_dir).expanduser().resolve() != out_dir.resolve() and info.is_main:
                log.warning("resuming %s: writing into %s, not into train.output_dir=%s (a resumed run "
                            "continues where --resume points)", self.resume, out_dir, cfg.train.output_dir)
            cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"output_dir": str(out_dir)})})
        # What the run records (config.yaml, each checkpoint's config.json) must mean the same from
        # any directory: relative paths are made absolute, against the directory they are opened from.
        self.cfg = cfg.with_absolute_paths()
        return out_dir

    def _grad_scaler(self, info: DistInfo) -> torch.amp.GradScaler:
        use_scaler = self.cfg.train.amp == "fp16"
        if use_scaler and info.device.type != "cuda":
            raise ValueError("train.amp=fp16 needs a CUDA device; use train.amp=bf16 on the CPU")
        return torch.amp.GradScaler("cuda", enabled=use_scaler)

    def _restore(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler) -> _Progress:
        """Where the run stands: the start, or the state of the checkpoint ``--resume`` names."""
        if self.resume is None:
            return _Progress()
        ckpt, state, weights = load_resume_checkpoint(self.resume)
        _load_run_weights(unwrap(model), weights, state.get("aux_state"))
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        progress = _Progress(start_epoch=int(state["epoch"]) + 1, best_value=state.get("best_value"),
                             best_epoch=state.get("best_epoch"), history=list(state.get("history", [])))
        log.info("resumed from %s: continuing at epoch %d", ckpt, progress.start_epoch)
        return progress

    def _wrap_for_training(self, model: nn.Module, info: DistInfo) -> nn.Module:
        """DDP (with SyncBatchNorm on CUDA) and ``torch.compile`` as configured."""
        train_model: nn.Module = model
        if info.distributed:
            if info.device.type != "cuda" and any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
                log.info("gloo DDP: BatchNorm statistics stay per process (SyncBatchNorm needs NCCL)")
            elif info.device.type == "cuda":
                train_model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            train_model = DistributedDataParallel(
                train_model,
                device_ids=[info.local_rank] if info.device.type == "cuda" else None,
                find_unused_parameters=True,  # the paper models keep tensors they never use
            )
        if self.cfg.train.compile:
            train_model = torch.compile(train_model)
        return train_model

    def _build_data(self, size: int, info: DistInfo) -> _Data:
        cfg = self.cfg
        dataset = build_train_dataset(cfg, size)
        loader, sampler = build_train_loader(cfg, dataset, info)
        accum = cfg.train.accum_steps
        steps_per_epoch = len(loader) // accum
        if cfg.train.max_steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
        if steps_per_epoch < 1:
            raise ValueError(f"one epoch has {len(loader)} batches, fewer than train.accum_steps={accum}")
        test_loaders = {
            name: build_eval_loader(path, cfg, info, size=size) for name, path in cfg.data.test.items()
        }
        return _Data(dataset, loader, sampler, steps_per_epoch, test_loaders)

    def _start_run_folder(self, out_dir: Path, model: nn.Module, data: _Data, info: DistInfo) -> None:
        cfg = self.cfg
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out_dir)
        text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
        atomic_write(out_dir / "config.yaml", lambda tmp: tmp.write_text(text))
        n_params = sum(p.numel() for p in model.parameters())
        log.info("model %s: %s parameters", cfg.model.name, f"{n_params:,}")
        log.info(
            "training %d epochs × %d steps (batch %d × accum %d × %d processes) on %s; %d samples per epoch",
            cfg.train.epochs, data.steps_per_epoch, cfg.train.batch_size, cfg.train.accum_steps, info.world_size,
            info.device, len(data.dataset),
        )

    def _run_epoch(self, run: _Run, epoch: int) -> None:
        """Train one epoch, evaluate when due, keep the best, save when due."""
        cfg, info, progress = self.cfg, run.info, run.progress
        torch.manual_seed(epoch_seed(cfg.train.seed, epoch, info.rank))
        if hasattr(run.data.dataset, "set_epoch"):
            run.data.dataset.set_epoch(epoch)
        run.data.sampler.set_epoch(epoch)
        t0 = time.time()
        train_stats = self._train_one_epoch(
            run.train_model, run.data.loader, run.optimizer, run.scaler, info, epoch, run.data.steps_per_epoch,
            run.log,
        )
        seconds = round(time.time() - t0, 2)
        record: dict[str, Any] = {"type": "train", "epoch": epoch, "seconds": seconds, **train_stats}
        run.log.jsonl(record)
        progress.history.append(record)
        if info.is_main:
            terms = ", ".join(f"{k[6:]} {v:.4f}" for k, v in train_stats.items() if k.startswith("train_"))
            log.info("epoch %d/%d: %s; lr %.2e; %.1f s", epoch + 1, cfg.train.epochs, terms,
                     train_stats["lr"], seconds)

        last = epoch == cfg.train.epochs - 1
        results: dict[str, dict[str, Any]] = {}
        if run.data.test_loaders and ((epoch + 1) % cfg.train.eval_every == 0 or last):
            results = self._evaluate_all(run.model, run.data.test_loaders, info, epoch, run.log)
            progress.final_metrics = results
        improved = self._select_best(run, epoch, results) if results else False
        if (epoch + 1) % cfg.train.save_every == 0 or last or improved:
            if info.is_main:
                self._save_epoch(run, epoch, results, improved)
            barrier()

    def _select_best(self, run: _Run, epoch: int, results: dict[str, dict[str, Any]]) -> bool:
        """Record an evaluation; whether it beat the best so far on ``train.best_metric``."""
        progress, metric = run.progress, self.cfg.train.best_metric
        improved = False
        value = _selection_value(results, metric)
        if value is not None and (progress.best_value is None or value > progress.best_value):
            progress.best_value, progress.best_epoch, improved = value, epoch, True
        eval_record = {"type": "eval", "epoch": epoch, "results": results,
                       "selection": {metric: value}, "best_epoch": progress.best_epoch}
        run.log.jsonl(eval_record)
        progress.history.append(eval_record)
        return improved

    def _save_epoch(self, run: _Run, epoch: int, results: dict[str, dict[str, Any]], improved: bool) -> None:
        cfg, progress = self.cfg, run.progress
        model_state, aux_state = _split_run_weights(unwrap(run.model))
        state = {
            "aux_state": aux_state,
            "optimizer": run.optimizer.state_dict(),
            "scaler": run.scaler.state_dict(),
            "rng": rng_state(),
            "epoch": epoch,
            "best_value": progress.best_value,
            "best_epoch": progress.best_epoch,
            "history": progress.history,
            "forgeloc_version": __version__,
        }
        progress.last_ckpt = save_checkpoint(
            run.out_dir, epoch, model_state,
            inference_config(cfg, run.model, run.size, epoch, results or None), state,
            keep_last=cfg.train.keep_last,
        )
        if improved:
            progress.best_ckpt = copy_as_best(progress.last_ckpt, run.out_dir)
            log.info("new best %s = %.4f at epoch %d", cfg.train.best_metric, progress.best_value, epoch)

    # ---------------------------------------------------------------------------------------------
    def _train_one_epoch(
        self,
        model: nn.Module,
        loader: Any,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        info: DistInfo,
        epoch: int,
        steps_per_epoch: int,
        run_log: RunLogger,
    ) -> dict[str, float]:
        cfg = self.cfg
        accum = cfg.train.accum_steps
        model.train()
        optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        n_steps = 0
        lr = 0.0
        data_iter = iter(loader)
        with train_progress(info.is_main) as progress:
            task = progress.add_task(f"epoch {epoch + 1}/{cfg.train.epochs}", total=steps_per_epoch, loss="-", lr="-")
            for micro_step in range(steps_per_epoch * accum):
                batch = move_batch(next(data_iter), info.device, cfg.train.channels_last)
                opt_step, micro = divmod(micro_step, accum)
                if micro == 0:
                    lr = learning_rate(cfg.optim, epoch + opt_step / steps_per_epoch, cfg.train.epochs)
                    set_learning_rate(optimizer, lr)
                out = self._forward_backward(model, batch, scaler, info, last_micro=micro == accum - 1,
                                             where=f"epoch {epoch}, step {opt_step}")
                terms = {"loss": out["loss"].detach(),
                         **{k: v.detach() for k, v in out.get("loss_terms", {}).items()}}
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v) / accum
                if micro < accum - 1:
                    continue
                self._optimizer_step(model, optimizer, scaler)
                n_steps += 1
                global_step = epoch * steps_per_epoch + opt_step
                progress.update(task, advance=1, loss=f"{sums['loss'] / n_steps:.4f}", lr=f"{lr:.2e}")
                if global_step % cfg.train.log_every == 0:
                    run_log.scalars({k: float(v) for k, v in terms.items()}, global_step, prefix="train/")
                    run_log.scalars({"lr": lr}, global_step, prefix="train/")
        stats = torch.tensor([sums[k] for k in sorted(sums)] + [n_steps], dtype=torch.float64, device=info.device)
        if info.distributed:
            torch.distributed.all_reduce(stats)
        means = {f"train_{k}": float(stats[i] / stats[-1]) for i, k in enumerate(sorted(sums))}
        means["lr"] = lr
        run_log.scalars(means, (epoch + 1) * steps_per_epoch, prefix="epoch/")
        return means

    def _forward_backward(self, model: nn.Module, batch: dict[str, Any], scaler: torch.amp.GradScaler,
                          info: DistInfo, *, last_micro: bool, where: str) -> dict[str, Any]:
        """One micro-batch: forward under autocast, a finite-loss check, backward of ``loss / accum``
        (DDP's gradient sync deferred to the last micro-batch of an optimiser step)."""
        accum = self.cfg.train.accum_steps
        defer_sync = isinstance(model, DistributedDataParallel) and not last_micro
        with model.no_sync() if defer_sync else nullcontext():
            with autocast_context(info.device, self.cfg.train.amp):
                out = model(batch)
            loss = out["loss"]
            if not torch.isfinite(loss):
                terms = {k: float(v) for k, v in out.get("loss_terms", {}).items()}
                raise FloatingPointError(
                    f"non-finite loss {float(loss)} at {where} (terms {terms}); "
                    "lower optim.lr, enable optim.grad_clip, or check the data"
                )
            scaler.scale(loss / accum).backward()
        return out

    def _optimizer_step(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler) -> None:
        if self.cfg.optim.grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), self.cfg.optim.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    def _evaluate_all(
        self, model: nn.Module, loaders: dict[str, Any], info: DistInfo, epoch: int, run_log: RunLogger
    ) -> dict[str, dict[str, Any]]:
        cfg = self.cfg
        results = {}
        step = (epoch + 1)
        for name, loader in loaders.items():
            samples: list[torch.Tensor] = []

            def keep_samples(batch: dict[str, Any], out: dict[str, Any], samples=samples) -> None:
                if not samples and info.is_main:
                    k = min(4, batch["image"].shape[0])
                    mask = batch["mask"][:k].float().expand(-1, 3, -1, -1)
                    pred = out["pred_mask"][:k].float().expand(-1, 3, -1, -1)
                    samples.append(torch.cat([_denormalize(batch["image"][:k]), mask, pred], dim=3).cpu())

            res = evaluate(
                model, loader, info.device, definition=cfg.eval.definition, threshold=cfg.eval.threshold,
                image_score=cfg.eval.image_score, amp=cfg.train.amp, channels_last=cfg.train.channels_last,
                on_batch=keep_samples,
            )
            results[name] = res
            run_log.scalars({k: v for k, v in res.items() if isinstance(v, (int, float))}, step, prefix=f"test/{name}/")
            if samples:
                run_log.images(f"test/{name}/image|mask|prediction", samples[0], step)
        if info.is_main:
            console.print(metrics_table(results, title=f"evaluation after epoch {epoch + 1}"))
        return results


def _split_run_weights(net: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """(inference weights, auxiliary-head weights): ``model.safetensors`` must load into the bare
    model for prediction, so an auxiliary-loss wrapper's heads travel in the training state."""
    inner = getattr(net, "inner_state_dict", None)
    if not callable(inner):
        return net.state_dict(), None
    aux = {k: v for k, v in net.state_dict().items() if k.startswith("aux.")}
    return inner(), aux


def _load_run_weights(net: nn.Module, weights: dict[str, torch.Tensor], aux: dict | None) -> None:
    if aux is None:
        net.load_state_dict(weights, strict=True)
    else:
        net.load_state_dict({**{f"model.{k}": v for k, v in weights.items()}, **aux}, strict=True)


def _selection_value(results: dict[str, dict[str, Any]], metric: str) -> float | None:
    values = [
        r[metric] for r in results.values() if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])
    ]
    if not values:
        log.warning("selection metric %r is not available in the evaluation results", metric)
        return None
    return float(np.mean(values))


def train(cfg: Config, resume: str | Path | None = None, device: str | None = None) -> TrainResult:
    """Train ``cfg`` (see :class:`Trainer`)."""
    return Trainer(cfg, resume=resume, device=device).fit()
