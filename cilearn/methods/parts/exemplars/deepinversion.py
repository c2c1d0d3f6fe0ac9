"""DeepInversion synthetic exemplars, the iCaRL study's second proposal (§5.2), after Yin et al., "Dreaming
to Distill: Data-free Knowledge Transfer via DeepInversion", CVPR 2020.

After a task is trained, class-conditional images are synthesized by optimising the *inputs* ``x`` of the
frozen network just trained (the teacher) with Adam, for the target labels ``y``:

    L(x) = CE(teacher(x'), y) + α_tv·TV(x') + α_l2·‖x'‖²
           + α_f·Σ_l ( ‖μ_l(x') − running_mean_l‖₂ + ‖σ²_l(x') − running_var_l‖₂ )
           + α_c·(1 − JS(p_T(x'), p_S(x')))                      (Adaptive DeepInversion only)

``x'`` is ``x`` randomly jittered; ``μ_l``/``σ²_l`` are the per-channel mean and (biased) variance over
the batch of the input of BatchNorm layer ``l`` (forward hooks on every BatchNorm layer of the
teacher, which stays in eval mode); ``p_T``/``p_S`` are the teacher's and a student's softened outputs.

Facts taken from the authors' code (github.com/NVlabs/DeepInversion, ``cifar10/deepinversion_cifar10.py``
and ``deepinversion.py``) where the paper and the study leave them open:

- ``x`` lives in the network's normalised input space: noise starts as a standard normal there, images
  start normalised, and after every Adam step ``x`` is clipped to the range that maps back to [0, 1]
  pixels (the ImageNet code's ``clip``);
- jitter: one random cyclic shift (``torch.roll``) of up to ``jitter`` pixels (2 in the CIFAR code) per
  axis and iteration for the whole batch; a random horizontal flip of the batch is optional (``flip``:
  the ImageNet code flips, the CIFAR code does not — off by default);
- TV is the sum of the L2 norms of the four neighbour differences (right, down and both diagonals) over
  the batch: the code's ``loss_var_l2``, which its CIFAR script weights by 2.5e-5, the study's α_tv;
- every BatchNorm layer has the same weight (the CIFAR code; the ImageNet code's first-layer multiplier
  is not used);
- Adam with default betas at a constant learning rate, 0.05 by default: the "parameters from the paper" of the
  authors' CIFAR README (``--di_lr=0.05``; 0.1 is only their script's argparse default).  Their README pairs it
  with ``--r_feature_weight=10``; ``alpha_f`` keeps the iCaRL study's 5.0, whose proposal this module reproduces.

Departures, and why:

- the L2 prior is the *squared* norm ``‖x'‖²`` of the batch, as issue 11 writes it; the code uses the
  norm (with α_l2 = 1e-8 the term is negligible either way);
- JS is the paper's (and the study's eq. 10): ``½·KL(p_T‖M) + ½·KL(p_S‖M)``, ``M = ½(p_T + p_S)``,
  natural logarithm, per image then averaged, on ``softmax(logits / T)`` with the code's T = 3.  The
  code computes ``½·KL(M‖p_S) + ½·KL(M‖p_T)`` on probabilities clamped to [0.01, 0.99] and clamps the
  result to [0, 1]; the true JS needs neither (it is finite and at most ln 2 < 1);
- the images of the last iteration are kept (the code keeps the batch of lowest loss seen, a noisy
  criterion under random jitter);
- Adaptive DeepInversion's student is a randomly initialised network of the teacher's architecture (the
  run's own initialisation, from a seed of the synthesis generator), one per task.  The paper updates the student
  between synthesized batches; with one batch per task (few classes per task) that student would never
  learn before it is used, so here it takes ``student_steps`` distillation steps (KL divergence to the
  teacher's softened outputs on the jittered batch, Adam at ``student_lr``) after every synthesis
  iteration, and keeps learning across the task's chunks: it follows the batch "as it is made".

Classes are synthesized ``class_chunk`` at a time, one batch per chunk holding all their images (the
batch statistics of the BatchNorm term mix the classes, as the authors' batches do), so memory is
bounded by the chunk.  Every random draw comes from one ``torch.Generator`` seeded from the run's seed
and the task, so a synthesis is a pure function of (teacher weights, seed, task, options): a run killed
during synthesis resumes from its last checkpoint and synthesizes exactly the same images again.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ....log import get_logger, progress_disabled
from ....runtime import eager_optimizer
from ....schema import option
from ..memory import KIND_CODES, ClassPool, herding

log = get_logger(__name__)


@dataclasses.dataclass
class DeepInversionOptions:
    iterations: int = option(300, min=1, help="Adam steps on the inputs per chunk of classes (study: 300)")
    lr: float = option(0.05, min=1e-12, help="Adam learning rate on the (normalised) inputs (the authors' CIFAR "
                                             "README's paper parameters: 0.05; their script's default is 0.1)")
    alpha_tv: float = option(2.5e-5, min=0.0, help="weight of the total-variation prior")
    alpha_l2: float = option(1e-8, min=0.0, help="weight of the squared L2 norm of the inputs")
    alpha_f: float = option(5.0, min=0.0, help="weight of the BatchNorm feature-statistics term (the iCaRL study: "
                                               "5; the DeepInversion authors' CIFAR paper parameters: 10)")
    alpha_c: float = option(10.0, min=0.0, help="weight of the teacher/student competition term (adaptive only)")
    adaptive: bool = option(False, help="Adaptive DeepInversion: a student network and the competition term")
    init: Literal["noise", "random_images", "herding"] = option(
        "noise", help="starting points: random noise, random training images of the class, or its herding exemplars")
    mode: Literal["replace", "add"] = option(
        "replace", help="replace: the class's exemplars are all synthetic; add: real (selected) and synthetic "
                        "alternate within the class's budget")
    class_chunk: int = option(4, min=1, help="classes synthesized together in one batch (bounds the memory used)")
    jitter: int = option(2, min=0, help="random cyclic shift of up to this many pixels per iteration")
    flip: bool = option(False, help="random horizontal flip of the batch per iteration")
    temperature: float = option(3.0, min=1e-3, help="softmax temperature of the competition term and the "
                                                   "student's distillation")
    student_steps: int = option(1, min=0, help="adaptive: student distillation steps after every synthesis iteration")
    student_lr: float = option(1e-3, min=1e-12, help="adaptive: Adam learning rate of the student")


# --- the terms of the objective ------------------------------------------------------------------------
def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Sum of the L2 norms of the differences between neighbouring pixels (right, down, both diagonals)."""
    right = x[:, :, :, :-1] - x[:, :, :, 1:]
    down = x[:, :, :-1, :] - x[:, :, 1:, :]
    diagonal = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    anti_diagonal = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    return right.norm() + down.norm() + diagonal.norm() + anti_diagonal.norm()


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon divergence (nats) between the rows of two probability matrices: ``½KL(p‖m) + ½KL(q‖m)``,
    ``m = ½(p + q)``; one value per row."""
    m = 0.5 * (p + q)
    kl_pm = (torch.special.xlogy(p, p) - torch.special.xlogy(p, m)).sum(-1)
    kl_qm = (torch.special.xlogy(q, q) - torch.special.xlogy(q, m)).sum(-1)
    return 0.5 * (kl_pm + kl_qm)


def competition(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Adaptive DeepInversion's ``1 − JS(p_T, p_S)`` on ``softmax(logits / T)``, averaged over the batch:
    minimising it pushes the images towards where teacher and student disagree."""
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    p_s = F.softmax(student_logits / temperature, dim=1)
    return 1.0 - js_divergence(p_t, p_s).mean()


class BatchNormStatistics:
    """Forward hooks on every BatchNorm layer of ``model``: after a forward pass, :meth:`pop` gives
    ``Σ_l ‖μ_l − running_mean_l‖₂ + ‖σ²_l − running_var_l‖₂`` of that pass (``σ²`` biased, over the batch
    and the spatial positions of the layer's input)."""

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules()
                       if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]
        self.handles: list = []
        self.terms: list[torch.Tensor] = []

    def __enter__(self) -> BatchNormStatistics:
        self.handles = [layer.register_forward_hook(self._hook) for layer in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles, self.terms = [], []

    def _hook(self, module, inputs, output) -> None:
        x = inputs[0].float()
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dims)
        var = x.var(dims, correction=0)
        self.terms.append((mean - module.running_mean).norm() + (var - module.running_var).norm())

    def pop(self) -> torch.Tensor:
        total = torch.stack(self.terms).sum() if self.terms else torch.zeros(())
        self.terms = []
        return total


# --- the optimisation ------------------------------------------------------------------------------------
def frozen(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode without gradients (the teacher)."""
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
        p.grad = None
    return teacher


def random_student(teacher: nn.Module, generator: torch.Generator,
                   build: Callable[[], nn.Module] | None = None) -> nn.Module:
    """A randomly initialised network of ``teacher``'s architecture, from a seed drawn from ``generator``; the
    global random state is left as it was.  ``build()`` makes a fresh network with an empty head (the run's
    own initialisation), grown here to the teacher's head chunks; without it, a copy of the teacher has every
    layer re-initialised (PyTorch's default schemes, BatchNorm statistics reset)."""
    kernel = next(teacher.parameters())
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if build is not None:
            student = build().cpu()
            for part in teacher.head.task_slices:
                student.add_classes(part.stop - part.start)
        else:
            student = copy.deepcopy(teacher).cpu()
            for module in student.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    for p in student.parameters():
        p.requires_grad_(True)
    return student.to(kernel.device, memory_format=memory_format_of(teacher)).eval()


def memory_format_of(model: nn.Module) -> torch.memory_format:
    """channels_last when the model's convolutions are stored so (inputs in the same layout run faster)."""
    kernels = [p for p in model.parameters() if p.dim() == 4]
    if kernels and kernels[0].is_contiguous(memory_format=torch.channels_last) and not kernels[0].is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def jitter(x: torch.Tensor, pixels: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """One random cyclic shift (and, with ``flip``, a coin-flip horizontal mirror) of the whole batch."""
    if pixels:
        dy, dx = (int(v) for v in torch.randint(-pixels, pixels + 1, (2,), generator=generator))
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    if flip and bool(torch.rand((), generator=generator) < 0.5):
        x = torch.flip(x, dims=(3,))
    return x


@dataclasses.dataclass
class Student:
    """Adaptive DeepInversion's student and its optimiser (kept across the chunks of one task)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer

    @classmethod
    def create(cls, teacher: nn.Module, lr: float, generator: torch.Generator,
               build: Callable[[], nn.Module] | None = None) -> Student:
        model = random_student(teacher, generator, build)
        return cls(model, eager_optimizer(torch.optim.Adam)(model.parameters(), lr=lr))

    def distill(self, inputs: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> float:
        """One step of KL(p_T ‖ p_S)·T² on ``inputs`` (BatchNorm in training mode), then back to eval mode."""
        self.model.train()
        log_p_s = F.log_softmax(self.model(inputs) / temperature, dim=1)
        p_t = F.softmax(teacher_logits / temperature, dim=1)
        loss = F.kl_div(log_p_s, p_t, reduction="batchmean") * temperature ** 2
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.model.eval()
        return float(loss.detach())


def synthesize(teacher: nn.Module, start: torch.Tensor, targets: torch.Tensor, options: DeepInversionOptions,
               low: torch.Tensor, high: torch.Tensor, generator: torch.Generator, student: Student | None = None,
               trace: list[dict] | None = None, bar: tqdm | None = None) -> torch.Tensor:
    """Optimise the normalised batch ``start`` (N, C, H, W) into images of ``targets`` for ``teacher``
    (frozen, eval mode).  ``low``/``high`` (1, C, 1, 1) are the normalised values of pixels 0 and 1.
    With ``student`` the competition term is added and the student distils the teacher after each step.
    ``trace`` (optional) receives every iteration's terms (floats, before the step).  Returns the final
    batch, detached, inside [low, high]."""
    x = start.detach().clamp(low, high).contiguous(memory_format=memory_format_of(teacher)).requires_grad_(True)
    optimizer = eager_optimizer(torch.optim.Adam)([x], lr=options.lr)
    with BatchNormStatistics(teacher) as statistics:
        for _ in range(options.iterations):
            shifted = jitter(x, options.jitter, options.flip, generator)
            logits = teacher(shifted)
            cross_entropy = F.cross_entropy(logits, targets)
            features = statistics.pop()
            tv, l2 = total_variation(shifted), shifted.square().sum()
            loss = cross_entropy + options.alpha_tv * tv + options.alpha_l2 * l2 + options.alpha_f * features
            compete = None
            if student is not None:
                compete = competition(logits, student.model(shifted), options.temperature)
                loss = loss + options.alpha_c * compete
            (gradient,) = torch.autograd.grad(loss, [x])  # the inputs only: no weight gradients are computed
            if trace is not None:
                terms = {"loss": loss, "cross_entropy": cross_entropy, "features": features, "tv": tv, "l2": l2,
                         "competition": compete}
                trace.append({k: None if v is None else float(v.detach()) for k, v in terms.items()})
            x.grad = gradient
            optimizer.step()
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, high), low))
            if student is not None:
                for _ in range(options.student_steps):
                    student.distill(shifted.detach(), logits.detach(), options.temperature)
            if bar is not None:
                bar.update()
    return x.detach()


# --- the memory builder ---------------------------------------------------------------------------------
def to_uint8(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> np.ndarray:
    """Normalised (N, C, H, W) → uint8 NHWC pixels (clipped to [0, 1], rounded)."""
    pixels = (x * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def interleave(real: np.ndarray, synthetic: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``mode: add``: real and synthetic exemplars alternate (real first), so that every reduction of the
    class keeps (about) half of each; leftovers of the longer list go last.  Returns images and kinds."""
    order, kinds = [], []
    for k in range(max(len(real), len(synthetic))):
        for images, kind in ((real, "real"), (synthetic, "synthetic")):
            if k < len(images):
                order.append(images[k])
                kinds.append(KIND_CODES[kind])
    shape = real.shape[1:] if len(real) else synthetic.shape[1:]
    stacked = np.stack(order) if order else np.zeros((0, *shape), dtype=np.uint8)
    return stacked.astype(np.uint8, copy=False), np.asarray(kinds, dtype=np.int8)


class DeepInversionBuilder:
    """Builds each new class's exemplars by DeepInversion from the network just trained (an
    :class:`~cilearn.methods.parts.memory.ExemplarBuilder`).  ``features(images) -> (n, d)`` serves
    ``init: herding``."""

    def __init__(self, options: DeepInversionOptions, model: nn.Module, mean: Sequence[float],
                 std: Sequence[float], device: torch.device | str, seed: int = 0,
                 features: Callable[[np.ndarray], torch.Tensor] | None = None,
                 log: Callable[[str], None] = log.info, build_model: Callable[[], nn.Module] | None = None):
        self.options, self.model, self.device, self.seed = options, model, torch.device(device), int(seed)
        self.build_model = build_model  # Adaptive DI's student: a fresh network of the same architecture
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.features, self.log = features, log
        self.timings: list[dict] = []  # one entry per build: classes, images, seconds

    def generator(self, step: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + 104_729 * int(step) + 31)

    def normalize(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float() / 255
        return (x - self.mean) / self.std

    def starting_points(self, pool: ClassPool, count: int, generator: torch.Generator) -> torch.Tensor:
        init = self.options.init
        if init == "noise":
            shape = (count, pool.images.shape[3], pool.images.shape[1], pool.images.shape[2])
            return torch.randn(shape, generator=generator).to(self.device)
        if init == "random_images":
            picks = torch.randperm(len(pool.images), generator=generator)[:count].numpy()
        else:
            if self.features is None:
                raise ValueError("init: herding needs a feature extractor")
            picks = herding(self.features(pool.images), count).cpu().numpy()
        return self.normalize(pool.images[picks])

    def build(self, pools: list[ClassPool], per_class: int, select,
              step: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
        options, started = self.options, time.perf_counter()
        generator = self.generator(step)
        wanted = per_class if options.mode == "replace" else per_class // 2
        starts = [self.starting_points(pool, wanted, generator) for pool in pools]  # image inits: ≤ class size
        teacher = frozen(self.model)
        student = Student.create(teacher, options.student_lr, generator, self.build_model) if options.adaptive else None
        low, high = (0 - self.mean) / self.std, (1 - self.mean) / self.std
        chunks = [list(range(i, min(i + options.class_chunk, len(pools))))
                  for i in range(0, len(pools), options.class_chunk)]
        total = sum(len(s) for s in starts)
        self.log(f"DeepInversion: synthesizing {total} images of {len(pools)} classes (task {step + 1}, "
                 f"{len(chunks)} chunk{'s' if len(chunks) != 1 else ''}, {options.iterations} iterations"
                 f"{', adaptive' if options.adaptive else ''}, init {options.init})")
        synthetic: list[np.ndarray] = [np.zeros((0, *pool.images.shape[1:]), np.uint8) for pool in pools]
        bar = tqdm(total=options.iterations * len(chunks), desc=f"DeepInversion task {step + 1}",
                   disable=progress_disabled(log), leave=False, unit="it", dynamic_ncols=True)
        for chunk in chunks:
            if not sum(len(starts[i]) for i in chunk):
                bar.update(options.iterations)
                continue
            start = torch.cat([starts[i] for i in chunk])
            targets = torch.cat([torch.full((len(starts[i]),), pools[i].label, dtype=torch.long) for i in chunk])
            x = synthesize(teacher, start, targets.to(self.device), options, low, high, generator, student, bar=bar)
            images = to_uint8(x, self.mean, self.std)
            bounds = np.cumsum([0] + [len(starts[i]) for i in chunk])
            for k, i in enumerate(chunk):
                synthetic[i] = images[bounds[k]:bounds[k + 1]]
        bar.close()
        built = []
        for pool, images in zip(pools, synthetic):
            if options.mode == "replace":
                built.append((images, np.full(len(images), KIND_CODES["synthetic"], dtype=np.int8)))
            else:
                real = pool.images[select(pool, per_class - len(images))]
                built.append(interleave(real, images))
        seconds = time.perf_counter() - started
        self.timings.append({"step": int(step), "classes": len(pools), "images": int(total), "seconds": seconds})
        self.log(f"DeepInversion: {total} images of {len(pools)} classes in {seconds:.1f} s "
                 f"({seconds / max(len(pools), 1):.2f} s per class)")
        return built
