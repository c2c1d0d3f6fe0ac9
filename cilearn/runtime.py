"""Process-wide state a run sets up: random number generators, the device, torch's threads and flags, and
the optimizer classes it steps with (PyTorch's, eager)."""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError
from .log import get_logger

log = get_logger(__name__)

# CPU instruction sets that compute bfloat16 natively; without them oneDNN emulates bf16, slower than fp32.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every generator's state, as tensors and plain values (a checkpoint loads it with weights_only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per process
            return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: '{name}' is not a device; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: CUDA was requested but no GPU is available; use device: auto or cpu.")
    return device


def configure_torch(train_cfg, device: torch.device) -> None:
    """Threads, determinism and cudnn autotuning as the train config asks."""
    if train_cfg.num_threads:
        torch.set_num_threads(train_cfg.num_threads)
    if train_cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not train_cfg.deterministic


@contextmanager
def resumed_thread_count(train_cfg, device: torch.device, started: dict | None, label: str, config_file):
    """Run a resumed run with the torch thread count it started with (``started``: its run.json) when its config
    leaves ``train.num_threads`` to the machine: BatchNorm networks' numbers change with the count, so a run
    resumed on a machine with other cores would otherwise not equal an uninterrupted one.  The process's own
    count is restored afterwards (the next run of an experiment starts from it)."""
    before = torch.get_num_threads()
    recorded = (started or {}).get("torch_threads")
    if (not train_cfg.num_threads and device.type == "cpu" and isinstance(recorded, int) and recorded >= 1
            and recorded != before):
        log.info(f"{label} resuming with {recorded} torch threads, the count the run started with (this process "
                 f"had {before}; numbers of BatchNorm networks change with it); set train.num_threads in "
                 f"{config_file} to choose another")
        torch.set_num_threads(recorded)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` computes bfloat16 natively (so bf16 is faster than fp32), and what decided it."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return (major >= 8, f"GPU compute capability {major}.{minor} ({'≥' if major >= 8 else '<'} 8.0)")
    if device.type == "cpu":
        found = sorted(set(BF16_CPU_FLAGS) & cpu_flags())
        return (bool(found), f"CPU flags {', '.join(found)}" if found else
                f"this CPU has none of {'/'.join(BF16_CPU_FLAGS)}: bf16 would be emulated, slower than fp32")
    return False, f"no bf16 detection for {device.type} devices"


def resolve_precision(requested: str, device: torch.device,
                      detect: Callable[[torch.device], tuple[bool, str]] | None = None,
                      setting: str = "train.precision") -> tuple[str, str]:
    """``train.precision`` → ("fp32", "bf16" or "fp16", a one-line note on why).  The one place where ``auto`` is
    decided: bf16 where the device computes it natively, else fp32; an explicit ``bf16`` is honoured on any
    device (emulated where there is no native support, with a warning: correct but slow).  ``detect``
    replaces the hardware check (default :func:`native_bf16`), so that either path can be tested on any CPU;
    ``setting`` names the option in messages."""
    if requested == "fp32":
        return "fp32", "fp32 as configured"
    if requested == "fp16" and setting == "train.precision":
        if device.type != "cuda":
            log.warning(f"{setting} fp16 on {device}: float16 with a loss scale is meant for GPUs without bf16; "
                        f"here it is emulated, slower than fp32.")
        return "fp16", "fp16 as configured (float16 autocast, dynamic loss scale)"
    if requested not in ("auto", "bf16"):
        raise ConfigError(f"{setting}: '{requested}' is not a precision; use fp32, bf16, fp16 or auto.")
    fast, why = (detect or native_bf16)(device)
    if requested == "bf16":
        if not fast:
            log.warning(f"{setting} bf16 on {device}: {why}; it will be slower than fp32.")
        return "bf16", f"bf16 as configured ({why})"
    if fast:
        return "bf16", f"auto: bf16 ({why})"
    note = f"auto: fp32 ({why})"
    log.info(f"{setting} {note}")
    return "fp32", note


def run_precisions(train, device: torch.device, recorded: str | None = None) -> tuple[str, str]:
    """(training, inference) precision of a run: what ``train.precision`` means on this machine (config.yaml keeps
    what the user wrote, ``auto`` stays ``auto``; run.json and metrics.json record what ran) — a resumed ``auto``
    run keeps the precision it ``recorded`` when it started, even where auto would decide otherwise — and
    ``train.inference_precision`` (``same``: the training one)."""
    if train.precision == "auto" and recorded in ("fp32", "bf16"):
        precision = recorded
    else:
        precision = resolve_precision(train.precision, device)[0]
    if train.inference_precision == "same":
        return precision, precision
    return precision, resolve_precision(train.inference_precision, device, setting="train.inference_precision")[0]


def autocast(precision: str, device: torch.device):
    """The context the network's forward passes run in: bf16 or fp16 autocast (convolutions and matrix products
    in the reduced type, BatchNorm statistics and weights in fp32) or nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    return nullcontext()


# The wrappers PyTorch puts around optimizer methods for torch.compile, which import torch._dynamo on their first
# call: ``torch._disable_dynamo``'s (add_param_group, zero_grad, state_dict, load_state_dict) and
# ``_use_grad_for_differentiable``'s (step).  Known by the file and name of their code.
_COMPILER_WRAPPERS = {("_compile.py", "inner"), ("optimizer.py", "_use_grad")}
_WRAPPED_METHODS = ("add_param_group", "zero_grad", "state_dict", "load_state_dict", "step")


@functools.cache
def eager_optimizer(cls: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """A subclass of ``cls`` whose methods are PyTorch's own without the wrappers meant for ``torch.compile``.

    Those wrappers import ``torch._dynamo`` on the first step (PyTorch's compiler stack, 819 modules with
    sympy: 71 MiB resident and 1.3 s of start-up here) only to tell the compiler not to trace into the
    optimizer, which an eager loop never asks; ``step``'s wrapper otherwise only turns gradients off, as
    here.  Every update, state and state dict is the stock class's (tests/test_optim.py compares them to the
    bit).  A wrapper this code does not recognise (another PyTorch version) is kept as it is.  With
    ``train.compile`` the training loop keeps the stock classes."""
    name = f"Eager{cls.__name__}"
    body: dict = {"__doc__": cls.__doc__, "__module__": __name__, "__qualname__": name}
    for method in _WRAPPED_METHODS:
        wrapper = getattr(cls, method)
        if getattr(wrapper, "hooked", False):  # the step hooks Optimizer.__init__ adds to a class it made (its own
            wrapper = wrapper.__wrapped__      # instances' step runs them: it adds them to this subclass too)
        inner, code = getattr(wrapper, "__wrapped__", None), getattr(wrapper, "__code__", None)
        if inner is None or code is None or (Path(code.co_filename).name, code.co_name) not in _COMPILER_WRAPPERS:
            continue
        body[method] = torch.no_grad()(inner) if method == "step" else inner
    return type(name, (cls,), body)


def __getattr__(name: str):
    """``EagerSGD``, ``EagerAdam``, ...: the :func:`eager_optimizer` classes by name, so that pickle finds them."""
    stock = getattr(torch.optim, name[len("Eager"):], None) if name.startswith("Eager") else None
    if isinstance(stock, type) and issubclass(stock, torch.optim.Optimizer):
        return eager_optimizer(stock)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
