"""Class orders of a class split: which original label each position of the split holds (a named order, drawn
from a seed, or an explicit list), shared by the class-incremental scenarios and the domain stream ``split``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import ConfigError

PYCIL_SEED = 1993  # PyCIL's default seed; its CIFAR-100 order is numpy's permutation with this seed
CLASS_ORDERS = ("seed", "sorted", "pycil", "icarl_script", "vandeven")


def icarl_script_order() -> list[int]:
    """The first CIFAR-100 class order of Rebuffi et al.'s Theano script (github.com/srebuffi/iCaRL,
    ``main_cifar_100_theano.py``), obtained by replaying its draws: ``np.random.seed(1993)``, then the
    data loader shuffles each class's 500 training indices (100 shuffles), then ``np.random.shuffle``
    of ``arange(100)`` gives run 1's order.  The script averages 10 runs, each drawing a new order
    from the same stream after training; only this first one can be replayed without training.  It
    starts 87, 0, 52, 58, 44, the first of the three orders PODNet publishes."""
    rng = np.random.RandomState(PYCIL_SEED)
    for _ in range(100):
        rng.shuffle(np.arange(500))
    order = np.arange(100)
    rng.shuffle(order)
    return [int(c) for c in order]


def vandeven_order(num_classes: int, seed: int) -> list[int]:
    """The class order of van de Ven & Tolias's split MNIST (GMvandeVen/continual-learning, data.py): after
    ``np.random.seed(seed)`` they relabel digit ``y`` as ``perm[y]`` with ``perm = np.random.permutation(10)``
    (the identity for seed 0, their "exception"), and task ``k`` holds the new labels ``2k, 2k+1``: the digits
    ``argsort(perm)[2k:2k+2]``.  (``seed`` orders list ``perm`` itself, the inverse.)"""
    if seed == 0:
        return list(range(num_classes))
    return [int(c) for c in np.argsort(np.random.RandomState(seed).permutation(num_classes))]


def resolve_class_order(order: str | Sequence[int], num_classes: int, seed: int,
                        order_seed: int | None = None) -> list[int]:
    """Original label of each position: ``seed`` = numpy permutation from ``order_seed`` (default: the
    run ``seed``), ``pycil`` = the permutation with seed 1993, ``icarl_script`` (100 classes) = the first
    order of the original iCaRL script, ``vandeven`` = van de Ven & Tolias's order for the run ``seed``
    (:func:`vandeven_order`), ``sorted``, or an explicit list."""
    if isinstance(order, str):
        if order == "sorted":
            return list(range(num_classes))
        if order == "seed":
            draw = seed if order_seed is None else order_seed
            return [int(c) for c in np.random.RandomState(draw).permutation(num_classes)]
        if order == "pycil":
            return [int(c) for c in np.random.RandomState(PYCIL_SEED).permutation(num_classes)]
        if order == "vandeven":
            return vandeven_order(num_classes, seed)
        if order == "icarl_script":
            if num_classes != 100:
                raise ConfigError(f"scenario.class_order: 'icarl_script' is the order of iCaRL's CIFAR-100 script "
                                  f"and needs 100 classes; this dataset has {num_classes}. Use 'seed' or a list.")
            return icarl_script_order()
        if order == "icarl":
            raise ConfigError(
                "scenario.class_order: 'icarl' is no longer accepted: it meant numpy's permutation with seed 1993, "
                "which is PyCIL's order, not the one iCaRL's script drew. Use 'pycil' for that order (also to resume "
                "a run started with 'icarl': edit its config.yaml), 'icarl_script' for the first order of the "
                "original iCaRL script, or 'seed' for one order per run seed (iCaRL averaged 10 orders).")
        raise ConfigError(f"scenario.class_order: unknown order '{order}'. Use {', '.join(map(repr, CLASS_ORDERS))} "
                          f"or an explicit list of {num_classes} labels.")
    order = [int(c) for c in order]
    every = f"an explicit order lists every label 0..{num_classes - 1} exactly once"
    outside = [c for c in order if not 0 <= c < num_classes]
    if outside:
        raise ConfigError(f"scenario.class_order: label {outside[0]} does not exist (the dataset has {num_classes} "
                          f"classes, labels 0..{num_classes - 1}); {every}.")
    repeated = next((c for i, c in enumerate(order) if c in order[:i]), None)
    if repeated is not None:
        raise ConfigError(f"scenario.class_order: label {repeated} appears twice; {every}.")
    missing = sorted(set(range(num_classes)) - set(order))
    if missing:
        raise ConfigError(f"scenario.class_order: label {missing[0]} is missing ({len(order)} of {num_classes} "
                          f"labels given); {every}.")
    return order
