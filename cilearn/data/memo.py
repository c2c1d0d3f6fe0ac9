"""Within one experiment, the runs (and their validation before any training) share the last dataset
loaded instead of reading its files again; outside :func:`shared_datasets`, every load reads the files."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager

from ..schema import to_dict
from .registry import load_dataset

_SPLITS_CACHE: dict | None = None  # a dict only inside shared_datasets()


@contextmanager
def shared_datasets():
    global _SPLITS_CACHE
    outer, _SPLITS_CACHE = _SPLITS_CACHE, ({} if _SPLITS_CACHE is None else _SPLITS_CACHE)
    try:
        yield
    finally:
        _SPLITS_CACHE = outer


def release_shared_datasets() -> None:
    """Forget the dataset kept for the experiment's other runs: with one run left, whose scenario holds its own
    class-ordered copy of the data, the loaded splits would be a second copy of the dataset for the whole run."""
    if _SPLITS_CACHE is not None:
        _SPLITS_CACHE.clear()


def load_splits(data_cfg):
    """``load_dataset`` for a DataConfig (through the cache of :func:`shared_datasets` when active)."""
    cache = _SPLITS_CACHE
    try:
        key = (data_cfg.name, data_cfg.root, data_cfg.download,
               json.dumps(to_dict(data_cfg.options), sort_keys=True), os.environ.get("CILEARN_DATA", ""))
    except (TypeError, ValueError):  # options that are not plain data (an injected opener): no caching
        key = None
    if cache is not None and key is not None and key in cache:
        return cache[key]
    splits = load_dataset(data_cfg.name, data_cfg.root, data_cfg.download, data_cfg.options)
    if cache is not None:
        cache.clear()  # one dataset at a time: memory stays bounded
        if key is not None:
            cache[key] = splits
    return splits
