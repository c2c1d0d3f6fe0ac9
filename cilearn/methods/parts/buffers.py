"""Replay buffers that hand the training loop a minibatch of stored samples at every step.

A sampler lives on the training device: images stay uint8 NCHW (as the stream's), labels int64, and
any per-sample tensors a method stores beside them (DER's logits, the task of each sample) in
``extras``.  ``sample(n)`` draws with the global torch RNG, so a resumed run draws the same batches
(the checkpoint restores the RNG).  The loop augments the drawn images like the stream batch.
``sample(n)`` draws ``min(n, stored)`` samples without replacement by default, as Mammoth's buffer
(``np.random.choice(..., replace=False)``): a request for more samples than are stored returns every
stored sample once.  ``replacement=True`` draws ``min(n, stored)`` uniform indices with replacement
(cilearn 0.1: 128 draws from 200 samples hold about 95 distinct ones).

- :class:`ReservoirBuffer`: reservoir sampling over the stream (Vitter's algorithm R; every sample
  seen so far is in the buffer with the same probability ``capacity / seen``), as ER/DER use;
- :class:`ClassBalancedBuffer`: at most ``capacity // classes`` samples per class, first come first
  kept; shrinks the old classes when new ones arrive (GDumb's greedy rule fills it);
- :class:`MemorySampler`: draws from an iCaRL :class:`~cilearn.methods.parts.memory.ExemplarMemory`.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from ...augment import to_tensor_images
from ...data import ImageData


class ReplaySampler(Protocol):
    def __len__(self) -> int: ...

    def sample(self, n: int) -> dict[str, torch.Tensor]:
        """``{"images": uint8 NCHW, "labels": int64, "indices": int64, **extras}`` on the device."""
        ...


class TensorStore:
    """Fixed-capacity device tensors: images, labels and named extras, filled slot by slot."""

    def __init__(self, capacity: int, device: torch.device | str = "cpu", replacement: bool = False):
        self.capacity, self.device = int(capacity), torch.device(device)
        self.replacement = replacement
        self.images: torch.Tensor | None = None
        self.labels = torch.zeros(self.capacity, dtype=torch.long, device=self.device)
        self.extras: dict[str, torch.Tensor] = {}
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def _allocate(self, images: torch.Tensor, extras: dict[str, torch.Tensor]) -> None:
        if self.images is None:
            self.images = torch.zeros((self.capacity, *images.shape[1:]), dtype=torch.uint8, device=self.device)
        for key, value in extras.items():
            current = self.extras.get(key)
            if current is None:
                self.extras[key] = torch.zeros((self.capacity, *value.shape[1:]), dtype=value.dtype,
                                               device=self.device)
            elif current.shape[1:] != value.shape[1:]:  # logits of a head that grew: pad with zeros
                grown = torch.zeros((self.capacity, *value.shape[1:]), dtype=value.dtype, device=self.device)
                grown[:, : current.shape[1]] = current
                self.extras[key] = grown

    def put(self, slots: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
            extras: dict[str, torch.Tensor] | None = None) -> None:
        extras = extras or {}
        self._allocate(images, extras)
        self.images[slots] = images.to(self.device)
        self.labels[slots] = labels.to(self.device)
        for key, value in extras.items():
            target = self.extras[key]
            value = value.detach().to(self.device, target.dtype)
            if value.dim() > 1 and value.shape[1] < target.shape[1]:
                target[slots] = 0
                target[slots, : value.shape[1]] = value
            else:
                target[slots] = value

    def sample(self, n: int) -> dict[str, torch.Tensor]:
        return self.take(draw_indices(self.size, n, self.replacement, self.device))

    def take(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"images": self.images[index], "labels": self.labels[index], "indices": index}
        out.update({key: value[index] for key, value in self.extras.items()})
        return out

    def assign(self, images: torch.Tensor, labels: torch.Tensor, extras: dict[str, torch.Tensor] | None = None,
               ) -> None:
        """Replace the whole content (at most ``capacity`` samples)."""
        n = len(labels)
        if n > self.capacity:
            raise ValueError(f"{n} samples do not fit a buffer of {self.capacity}")
        self.size = 0
        self.images, self.extras = None, {}
        self.labels = torch.zeros(self.capacity, dtype=torch.long, device=self.device)
        if n:
            self.put(torch.arange(n, device=self.device), images, labels, extras)
        self.size = n

    def extend(self, images: torch.Tensor, labels: torch.Tensor, extras: dict[str, torch.Tensor] | None = None,
               ) -> None:
        """Append samples after the stored ones (as many as fit)."""
        n = min(len(labels), self.capacity - self.size)
        if n > 0:
            slots = torch.arange(self.size, self.size + n, device=self.device)
            self.put(slots, images[:n], labels[:n], {k: v[:n] for k, v in (extras or {}).items()})
            self.size += n

    def as_data(self, class_names) -> ImageData:
        """The stored samples as training data (uint8 NHWC on the CPU)."""
        n = self.size
        images = (self.images[:n].permute(0, 2, 3, 1).cpu().numpy() if n
                  else np.zeros((0, 1, 1, 1), dtype=np.uint8))
        return ImageData(np.ascontiguousarray(images), self.labels[:n].cpu().numpy(), class_names)

    def exemplars(self) -> dict | None:
        """What the report shows: the stored images (uint8 NHWC), their labels and slot order."""
        if not self.size:
            return None
        data = self.as_data([])
        return {"images": data.images, "labels": data.labels, "rank": np.arange(self.size)}

    def state_dict(self) -> dict:
        n = self.size
        state = {"size": n, "labels": self.labels[:n].cpu(),
                 "images": self.images[:n].cpu() if self.images is not None else torch.zeros(0, dtype=torch.uint8)}
        state["extras"] = {key: value[:n].cpu() for key, value in self.extras.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        self.assign(state["images"], state["labels"], state["extras"])
        self.size = int(state["size"])


def draw_indices(size: int, n: int, replacement: bool, device: torch.device | str = "cpu") -> torch.Tensor:
    """``min(n, size)`` indices into ``size`` stored samples: distinct (a uniform random subset, in random
    order) or, with ``replacement``, independent uniform draws."""
    count = min(int(n), size)
    if replacement:
        return torch.randint(0, size, (count,), device=device)
    return torch.randperm(size, device=device)[:count]


class EarlierTasks:
    """A store seen through the task each sample was stored in (its ``task_ids`` extra): only the samples of
    tasks before ``task`` are drawn, so nothing is replayed in the first task and the current task's samples never
    come back as replay — Caccia et al.'s task-based ER (pclucas14/AML ``buffer.sample_random`` with
    ``exclude_task``, the current task).  A view: the store itself is filled and saved as usual."""

    def __init__(self, store: TensorStore, task: int):
        self.store = store
        ids = store.extras.get("task_ids")  # the slots are read once: a view lives for one step
        self.eligible = (torch.zeros(0, dtype=torch.long, device=store.device) if ids is None
                         else torch.nonzero(ids[: store.size] < int(task)).flatten())

    def __len__(self) -> int:
        return len(self.eligible)

    def sample(self, n: int) -> dict[str, torch.Tensor]:
        return self.store.take(self.eligible[draw_indices(len(self.eligible), n, self.store.replacement,
                                                          self.store.device)])


class ReservoirBuffer(TensorStore):
    """Reservoir sampling: sample ``i`` of the stream (0-based) fills a free slot while there is one,
    else replaces a uniformly drawn slot with probability ``capacity / (i + 1)`` (``draws="per_sample"``,
    Vitter's algorithm R).

    ``draws="per_batch"`` is Caccia et al.'s buffer (pclucas14/AML ``buffer.add_reservoir``): every sample of a
    batch draws its slot from ``[0, seen)``, ``seen`` counted before the batch, so each is kept with probability
    ``capacity / seen`` instead of ``capacity / (i + 1)`` — a batch's samples are kept at most ``n / seen`` more
    often (relative), all with the same chance."""

    def __init__(self, capacity: int, device: torch.device | str = "cpu", replacement: bool = False,
                 draws: str = "per_sample"):
        super().__init__(capacity, device, replacement)
        if draws not in ("per_sample", "per_batch"):
            raise ValueError(f"draws must be per_sample or per_batch, not {draws!r}")
        self.draws = draws
        self.seen = 0

    def add(self, images: torch.Tensor, labels: torch.Tensor, extras: dict[str, torch.Tensor] | None = None,
            ) -> torch.Tensor:
        """Offer a batch; returns the slot each sample took (-1: not kept)."""
        n = len(labels)
        positions = torch.arange(self.seen, self.seen + n, device=self.device)
        # One random draw per sample: j ~ U{0..i} (algorithm R) or j ~ U{0..seen-1}, seen before the batch
        # (per_batch); the sample is kept if j < capacity.
        bound = (positions + 1).double() if self.draws == "per_sample" else float(self.seen)
        picks = (torch.rand(n, device=self.device) * bound).long()
        slots = torch.where(positions < self.capacity, positions, picks)
        slots = torch.where(slots < self.capacity, slots, torch.full_like(slots, -1))
        # Within one batch two samples may draw the same slot: the later one wins, as sequentially.
        keep = slots >= 0
        if bool(keep.any()):
            chosen = slots[keep]
            take = {k: v[keep] for k, v in (extras or {}).items()}
            last = _last_occurrence(chosen)
            self.put(chosen[last], images[keep][last], labels[keep][last], {k: v[last] for k, v in take.items()})
        self.seen += n
        self.size = min(self.capacity, self.seen)
        return slots

    def state_dict(self) -> dict:
        return {**super().state_dict(), "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.seen = int(state["seen"])


def _last_occurrence(values: torch.Tensor) -> torch.Tensor:
    """Positions of the last occurrence of each distinct value (so repeated slots keep the later write)."""
    order = torch.arange(len(values), device=values.device)
    last = torch.full((int(values.max()) + 1,), -1, dtype=torch.long, device=values.device)
    last.scatter_reduce_(0, values, order, reduce="amax")
    return last[last >= 0]


class ClassBalancedBuffer(TensorStore):
    """At most ``capacity // classes seen`` samples per class; a sample of a class below its share is
    kept (replacing a sample of the largest class when the buffer is full) — GDumb's greedy sampler."""

    def add(self, images: torch.Tensor, labels: torch.Tensor, extras: dict[str, torch.Tensor] | None = None) -> int:
        kept = 0
        labels_cpu = labels.cpu().tolist()
        for i, label in enumerate(labels_cpu):  # greedy, sample by sample: the rule is sequential
            current = self.labels[: self.size]
            classes = torch.unique(torch.cat([current, labels.new_tensor([label]).to(self.device)]))
            share = self.capacity // len(classes)
            count = int((current == label).sum())
            if count >= share and self.size >= self.capacity:
                continue
            if self.size < self.capacity:
                slot = self.size
                self.size += 1
            else:
                counts = torch.bincount(current, minlength=int(classes.max()) + 1)
                largest = int(counts.argmax())
                candidates = torch.nonzero(current == largest).flatten()
                slot = int(candidates[torch.randint(len(candidates), (1,), device=self.device)])
            one = {k: v[i:i + 1] for k, v in (extras or {}).items()}
            self.put(torch.tensor([slot], device=self.device), images[i:i + 1], labels[i:i + 1], one)
            kept += 1
        return kept

    def class_counts(self) -> dict[int, int]:
        values, counts = torch.unique(self.labels[: self.size], return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts)}


class MemorySampler:
    """Draws uniform minibatches from an exemplar memory (numpy, updated at the end of each task); its
    device copy is refreshed whenever the memory changed."""

    def __init__(self, memory, device: torch.device | str = "cpu", replacement: bool = False):
        self.memory, self.device, self.replacement = memory, torch.device(device), replacement
        self._images: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        self._version: tuple | None = None

    def __len__(self) -> int:
        return len(self.memory)

    def _refresh(self) -> None:
        version = (len(self.memory), id(self.memory.images))
        if version != self._version:
            self._images = to_tensor_images(self.memory.images, self.device)
            self._labels = torch.as_tensor(np.asarray(self.memory.labels), device=self.device)
            self._version = version

    def sample(self, n: int) -> dict[str, torch.Tensor]:
        self._refresh()
        index = draw_indices(len(self._labels), n, self.replacement, self.device)
        return {"images": self._images[index], "labels": self._labels[index], "indices": index}
