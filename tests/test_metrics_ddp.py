"""ForgeryMetrics under torch.distributed: 2 CPU processes (gloo) give the single-process numbers.

Each rank updates with its own shard of a data set whose size is not a multiple of 2; the shards
mimic ``DistributedSampler`` (rank r gets indices r::2, padded by repeating the first indices).
"""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from forgeloc.metrics import ForgeryMetrics

pytestmark = [
    pytest.mark.ddp,
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"),
]

WORLD = 2


def _data(n: int, seed: int = 0, size: int = 20):
    gen = torch.Generator().manual_seed(seed)
    pred = torch.rand(n, 1, size, size, generator=gen)
    mask = torch.zeros(n, 1, size, size)
    for i in range(n):
        if i % 3 != 2:  # every third image is authentic
            y, x = torch.randint(0, size - 6, (2,), generator=gen).tolist()
            mask[i, :, y : y + 6, x : x + 6] = 1
    pred = torch.round(torch.clamp(0.6 * pred + 0.4 * mask, 0, 1) * 255) / 255
    shape_mask = torch.ones_like(mask)
    shape_mask[::4, :, size - 5 :, :] = 0  # some padded images
    pred_label = torch.rand(n, generator=gen)
    return pred, mask, shape_mask, pred_label


# name: (definition, permute, number of images, per-rank index lists, batch size)
SCENARIOS = {
    "uneven_forgeloc": ("forgeloc", False, 9, [list(range(0, 9, 2)), list(range(1, 9, 2))], 2),
    "uneven_imdlbenco_permute": ("imdlbenco", True, 9, [list(range(0, 9, 2)), list(range(1, 9, 2))], 2),
    # DistributedSampler(7 images, 2 replicas) pads to 8 with index 0: rank 1 sees 1, 3, 5, 0
    "padded_sampler": ("forgeloc", False, 7, [[0, 2, 4, 6], [1, 3, 5, 0]], 3),
    "padded_sampler_imdlbenco": ("imdlbenco", False, 7, [[0, 2, 4, 6], [1, 3, 5, 0]], 4),
    # one image only: rank 1 never calls update
    "empty_rank": ("forgeloc", False, 1, [[0], []], 2),
    # a duplicate that is not the last image of its rank: pooled histogram metrics cannot be undone
    "non_last_duplicate": ("forgeloc", False, 4, [[0, 1, 2], [1, 3]], 1),
}


def _feed(metric: ForgeryMetrics, data, indices: list[int], batch: int, use_pred_label: bool) -> None:
    pred, mask, shape_mask, pred_label = data
    for start in range(0, len(indices), batch):
        idx = torch.tensor(indices[start : start + batch])
        metric.update(
            pred[idx], mask[idx], shape_mask=shape_mask[idx], index=idx,
            pred_label=pred_label[idx] if use_pred_label else None,
        )


def _run(name: str, indices: list[int], use_pred_label: bool):
    definition, permute, n, _, batch = SCENARIOS[name]
    metric = ForgeryMetrics(definition=definition, permute=permute)
    _feed(metric, _data(n), indices, batch, use_pred_label)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = metric.compute()
    per = {k: v.tolist() for k, v in metric.per_image().items()}
    return {"compute": out, "per_image": per, "warned": any("pooled" in str(w.message) for w in caught)}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        results = {}
        for name, scenario in SCENARIOS.items():
            for use_pred_label in (False, True):
                results[f"{name}/{use_pred_label}"] = _run(name, scenario[3][rank], use_pred_label)
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(results, f)
    finally:
        dist.destroy_process_group()


def _equal(a, b, key: str) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), key
        for k in a:
            _equal(a[k], b[k], f"{key}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), key
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _equal(x, y, f"{key}[{i}]")
    elif isinstance(a, float) and (math.isnan(a) or math.isnan(b)):
        assert math.isnan(a) and math.isnan(b), (key, a, b)
    else:
        assert a == pytest.approx(b, abs=1e-9), (key, a, b)


def test_two_gloo_ranks_match_one_process(tmp_path):
    # fork (where available) spares each child the import of torch: seconds on a loaded CI box.
    # Safe here: the children set one intra-op thread before any tensor work, so no OpenMP pool
    # inherited from the parent is ever entered.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(
        _worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True, start_method=method
    )
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    torch.set_num_threads(1)  # like the ranks (the conftest fixture restores the thread count)
    for name, (_, _, n, shards, _) in SCENARIOS.items():
        for use_pred_label in (False, True):
            key = f"{name}/{use_pred_label}"
            # one process, every image once, one batch
            single = _run(name, sorted(set(shards[0]) | set(shards[1])), use_pred_label)
            for r in range(WORLD):
                got = ranks[r][key]
                expected_dups = len(shards[0]) + len(shards[1]) - n
                assert got["compute"]["n_duplicates"] == expected_dups, key
                assert got["compute"]["n_images"] == n, key
                if name == "non_last_duplicate":
                    assert got["warned"], key
                    for k in ("pixel_auc_pooled", "pixel_auc_pooled_err_bound", "pixel_f1_best_thr_pooled"):
                        assert math.isnan(got["compute"][k]), key
                        got["compute"][k] = single["compute"][k]
                    for k in ("pixel_f1", "pixel_auc", "image_auc", "pixel_f1_pooled"):
                        assert not math.isnan(got["compute"][k]), key
                else:
                    assert not got["warned"], key
                got["compute"]["n_duplicates"] = 0.0
                _equal(got["compute"], single["compute"], f"{key}/rank{r}")
                _equal(got["per_image"], single["per_image"], f"{key}/rank{r}")
