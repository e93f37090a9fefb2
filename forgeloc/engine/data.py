"""From a config to data loaders (training with a balanced or plain sampler, sharded evaluation)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sized

import cv2
import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler, Sampler

from forgeloc.data.datasets import BalancedDataset, ForgeryDataset, load_records
from forgeloc.data.transforms import SampleTransform, augmentation_preset
from forgeloc.engine.config import Config, DataConfig
from forgeloc.engine.distributed import DistInfo


class ShardSampler(Sampler[int]):
    """Evaluation sampler: rank ``r`` of ``w`` takes indices ``r, r+w, r+2w, ...``.

    Unlike ``DistributedSampler`` it never pads with repeated samples, so every image is evaluated
    exactly once over all processes, whatever the dataset size.
    """

    def __init__(self, data: Sized, rank: int = 0, world_size: int = 1) -> None:
        self.n = len(data)
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def eval_transform(cfg: DataConfig, size: int | None = None, perturb: Callable | None = None) -> SampleTransform:
    """The test-time pipeline: optional perturbation at native resolution, then resize/pad, normalise."""
    return SampleTransform(mode=cfg.input_mode, size=size or cfg.input_size, augment=None,
                           edge_width=cfg.edge_width, perturb=perturb)


def train_transform(cfg: DataConfig, size: int | None = None) -> SampleTransform:
    return SampleTransform(mode=cfg.input_mode, size=size or cfg.input_size,
                           augment=augmentation_preset(cfg.augment), edge_width=cfg.edge_width)


def build_train_dataset(cfg: Config, size: int | None = None) -> Dataset:
    if not cfg.data.train:
        raise ValueError("data.train is empty: name at least one training dataset")
    transform = train_transform(cfg.data, size)
    kwargs = {"max_pixels": cfg.data.max_pixels} if cfg.data.max_pixels else {}
    parts = [ForgeryDataset(load_records(d.path), transform, seed=cfg.train.seed, **kwargs) for d in cfg.data.train]
    if cfg.data.samples_per_dataset:
        return BalancedDataset(parts, cfg.data.samples_per_dataset, seed=cfg.train.seed)
    return parts[0] if len(parts) == 1 else _EpochConcat(parts)


class _EpochConcat(ConcatDataset):
    """ConcatDataset that forwards ``set_epoch`` and re-numbers ``index`` globally."""

    def set_epoch(self, epoch: int) -> None:
        for d in self.datasets:
            d.set_epoch(epoch)

    def __getitem__(self, idx: int):
        sample = super().__getitem__(idx)
        sample["index"] = torch.tensor(idx, dtype=torch.int64)
        return sample


def _worker_init(worker_id: int) -> None:
    # Augmentations are seeded per sample by the dataset; this only keeps stray numpy use stable.
    np.random.seed(torch.initial_seed() % 2**32)
    # One OpenCV thread per worker: the workers already run in parallel, and OpenCV's own pool
    # does not survive fork() reliably.
    cv2.setNumThreads(1)


def build_train_loader(cfg: Config, dataset: Dataset, info: DistInfo) -> tuple[DataLoader, DistributedSampler]:
    sampler = DistributedSampler(
        dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.train.seed, drop_last=True
    )
    if len(sampler) < cfg.train.batch_size:
        raise ValueError(
            f"the training set gives each process {len(sampler)} samples, fewer than one batch of "
            f"{cfg.train.batch_size}; lower train.batch_size"
        )
    loader = DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        drop_last=True,  # BatchNorm needs >1 sample and every step must have the same batch size
        pin_memory=info.device.type == "cuda",
        worker_init_fn=_worker_init,
        persistent_workers=False,  # workers must see the dataset's new epoch for its augmentation seeds
    )
    return loader, sampler


def build_eval_loader(
    source: str,
    cfg: Config,
    info: DistInfo,
    *,
    size: int | None = None,
    perturb: Callable | None = None,
    batch_size: int | None = None,
) -> DataLoader:
    kwargs = {"max_pixels": cfg.data.max_pixels} if cfg.data.max_pixels else {}
    transform = eval_transform(cfg.data, size, perturb)
    dataset = ForgeryDataset(load_records(source), transform, seed=cfg.train.seed, **kwargs)
    return DataLoader(
        dataset,
        batch_size=batch_size or cfg.eval.batch_size or cfg.train.batch_size,
        sampler=ShardSampler(dataset, info.rank, info.world_size),
        num_workers=cfg.data.num_workers,
        drop_last=False,
        pin_memory=info.device.type == "cuda",
    )
