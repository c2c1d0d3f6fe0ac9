"""The sections of an experiment config as typed dataclasses (data, scenario, model, train, output).

They sit low in the package (the training loop, optimisers and scenarios read them) and import no component:
the options a component declares (``model.options``, ``data.options``, ``scenario.options`` and the method)
are parsed into that component's own dataclass by :func:`cilearn.config.parse_config`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from .schema import option


@dataclasses.dataclass
class DataConfig:
    name: str = option(help="dataset name (cilearn list)")
    root: str | None = option(None, help="data folder; default: $CILEARN_DATA or ~/.cache/cilearn/data")
    download: bool = option(False, help="download official archives when missing")
    normalize: bool | Literal["symmetric"] = option(
        True, help="standardise the inputs by the training set's per-channel mean and std; false: raw pixels in "
                   "[0, 1] (Mammoth's MNIST, van de Ven & Tolias); symmetric: 2x - 1, pixels in [-1, 1] (the "
                   "ER-ACE authors' code)")
    options: Any = option(default_factory=dict, help="the dataset's options, e.g. path for image_folder (cilearn "
                                                     "list --options); parsed into the dataset's options dataclass")
    keep_in_memory: bool = option(
        True, help="false: the run's class-ordered copy of the images lives in a temporary file in $CILEARN_CACHE "
                   "(deleted with the run) and only the pages a task reads stay resident (each task begins by "
                   "handing the others back): a smaller peak RSS, the same numbers; class- and task-incremental "
                   "scenarios")


@dataclasses.dataclass
class ScenarioConfig:
    type: Literal["class_incremental", "task_incremental", "domain_incremental"] = option(
        "class_incremental", help="task_incremental = class split + a head per task with task ids at test")
    classes_per_task: int | None = option(None, min=1, help="classes added by each task after the first")
    initial_classes: int | None = option(None, min=1, help="classes in the first task (B0: = classes_per_task)")
    num_tasks: int | None = option(None, min=1, help="stop after this many tasks (a head with every class's output "
                                                      "from the start keeps all of them: the tasks run are the "
                                                      "whole run's first ones)")
    class_order: str | list[int] = option(
        "seed", help="'seed' (numpy permutation from class_order_seed, default the run seed), 'pycil' (permutation "
                     "with seed 1993, PyCIL's CIFAR-100 order), 'icarl_script' (first order of iCaRL's CIFAR-100 "
                     "script), 'vandeven' (van de Ven & Tolias's split-MNIST order for the run seed: argsort of that "
                     "permutation), 'sorted', or a list of labels")
    class_order_seed: int | None = option(
        None, min=0, help="with class_order 'seed': draw the order from this seed, so that seeds: vary only the "
                          "initialisation and training randomness; default: each run seed draws its own order")
    options: Any = option(default_factory=dict, help="domain_incremental streams: stream and its options; parsed "
                                                     "into the stream's options dataclass")


@dataclasses.dataclass
class ModelConfig:
    name: str = option(help="model name (cilearn list)")
    options: Any = option(default_factory=dict, help="the model's options, e.g. width for ResNets (cilearn list "
                                                     "--options); parsed into the model's options dataclass")
    pretrained: str | None = option(
        None, help="start from a checkpoint: a run directory, a cilearn checkpoint or a state dict")
    transfer: Literal["full", "linear_probe", "freeze"] = option(
        "full", help="with pretrained: fine-tune everything, train only the head, or freeze the first freeze_stages")
    freeze_stages: int = option(0, min=0, help="stages (stem = stage 0) kept frozen when transfer is 'freeze'")


@dataclasses.dataclass
class TrainConfig:
    epochs: int = option(1, min=1, help="epochs per task")
    iterations: int | None = option(
        None, min=1, help="a fixed number of gradient steps per task instead of epochs (train.epochs is then "
                          "ignored; passes over fresh permutations of the data, the last one cut short; milestones "
                          "and warm-up count iterations)")
    batch_size: int = option(128, min=1)
    optimizer: Literal["sgd", "adam", "adamw", "adagrad"] = option(
        "sgd", help="sgd (momentum, nesterov), adam (L2 weight decay added to the gradient), adamw (decoupled), "
                    "adagrad (PyTorch's defaults: no lr decay, accumulator from 0, eps 1e-10)")
    optimizer_state: Literal["reset", "keep"] = option(
        "reset", help="reset: a fresh optimizer for every task (and stage); keep: its state (Adam's moments and "
                      "step counts, SGD's momentum, Adagrad's sums of squared gradients) carries over from task to "
                      "task, as one optimizer never reset (Hsu et al. 2018, van de Ven & Tolias 2019); outputs a "
                      "growing head adds start fresh")
    lr: float = option(0.1, min=0.0, help="learning rate (> 0)")
    momentum: float = option(0.9, min=0.0, max=1.0, help="sgd only")
    nesterov: bool = option(False, help="sgd only: Nesterov momentum (needs momentum > 0)")
    betas: list[float] = option(default_factory=lambda: [0.9, 0.999], min=0.0, max=1.0,
                                help="adam/adamw: the two moment decay rates, each in [0, 1)")
    weight_decay: float = option(5e-4, min=0.0)
    no_weight_decay: list[Literal["bias", "norm"]] = option(
        default_factory=list, help="parameters without weight decay: bias (every bias, normalisation shifts "
                                   "included), norm (normalisation scales); iCaRL's Theano code: [bias]")
    clip_grad_value: float | None = option(
        None, min=1e-12, help="clip every gradient element to [-v, v] after the backward pass, before the method's "
                            "before_step and the optimizer step (null: no clipping; the DER paper's SI code: 1)")
    scheduler: Literal["multistep", "cosine", "warm_restarts", "constant"] = option(
        "multistep", help="cosine: from lr down to min_lr over the epochs; warm_restarts: cosine cycles of 1, 2, 4, "
                          "... epochs (SGDR)")
    min_lr: float = option(0.0, min=0.0, help="the lowest learning rate of the cosine schedules")
    milestones: list[int] = option(default_factory=list, min=1, help="epochs (iterations with train.iterations) at "
                                                                     "which multistep multiplies lr by gamma")
    gamma: float = option(0.2, min=0.0)
    warmup: float = option(0.0, min=0.0, help="linear warm-up of the lr over this many epochs (iterations with "
                                              "train.iterations) before the scheduler; 0: none")
    warmup_factor: float | None = option(
        None, min=0.0, max=1.0, help="hold lr × this factor through the warm-up instead of the linear ramp (GDumb's "
                                     "warm start: 0.1 for one epoch); null: the linear ramp")
    augment: Literal["auto", "none", "crop", "crop_flip", "flip"] | list[Any] = option(
        "auto", help="auto: crop+flip for colour images, none for grey digits; or a list of steps, each a name or "
                     "{name: {option: value}}: crop {padding: 4}, flip, color_jitter {brightness, contrast, "
                     "saturation}, randaugment {num_ops: 2, magnitude: 9}, cutmix {alpha: 1.0, p: 0.5} (last; "
                     "methods whose loss is the batch's classification loss only); see cilearn/augment.py")
    first_task: Any = option(
        default_factory=dict, help="train settings of the first task only, over the rest of train (PyCIL's init_epoch, "
                                   "init_lr, init_milestones): epochs or iterations, batch_size, lr, momentum, "
                                   "weight_decay, scheduler, milestones, gamma, warmup, ...; e.g. {epochs: 4, "
                                   "milestones: [3], gamma: 0.1}; {}: every task trains alike")
    eval_batch_size: int = option(128, min=1, help="batch for evaluation and feature extraction (128: on CPU "
                                                   "faster than 256 or 1024 for the CIFAR ResNets, and less memory)")
    fold_batchnorm: bool = option(True, help="evaluation and feature extraction (herding, class means) run a copy "
                                             "of the network with each BatchNorm folded into its convolution (the "
                                             "same function; features equal to ~1e-5; timed by cilearn bench)")
    eval_every: int = option(1, min=0, help="evaluate on test data every N epochs (0: only after each task)")
    eval_subsample: int = option(
        2000, min=0, help="the per-epoch evaluation scores a fixed sample of at most this many test images, the "
                          "same number from each class (and task) seen (0: all of them); the evaluation after "
                          "each task, which the metrics and the last epoch's log row report, always scores all")
    checkpoint_every: int = option(0, min=0, help="also checkpoint every N epochs inside a task (0: only per task)")
    device: str = option("auto", help="auto, cpu, cuda or cuda:N")
    channels_last: bool = option(True)
    num_threads: int | None = option(None, min=1, help="torch CPU threads; default: all cores")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = option(
        "fp32", help="fp32 (the default: the same numbers on every machine); bf16: bfloat16 autocast for the "
                     "network's forward passes (losses, BatchNorm statistics, herding and class means stay fp32); "
                     "auto: bf16 where the device computes it natively (CPUs with AVX512-BF16/AMX, GPUs of "
                     "compute capability 8.0+), else fp32; fp16: float16 autocast with a dynamic loss scale "
                     "(torch.amp.GradScaler: a step whose gradients overflow is skipped and the scale halved), for "
                     "GPUs without bf16 (compute capability < 8.0); the run's metrics.json and run.json record what "
                     "ran")
    inference_precision: Literal["same", "fp32", "bf16"] = option(
        "same", help="precision of evaluation and feature extraction (herding, class means): same (as "
                     "train.precision) or bf16 with fp32 training (bf16 autocast for the network's forward passes "
                     "outside training; features come back fp32; about 1.7x faster inference where the CPU has "
                     "bf16 instructions, measured by cilearn bench); recorded in run.json and metrics.json")
    compile: bool = option(False, help="torch.compile the model")
    deterministic: bool = option(False, help="torch deterministic algorithms (slower on GPU)")
    progress: bool = option(True, help="progress bars")
    sync_batchnorm: bool = option(False, help="under torchrun: synchronise BatchNorm statistics across processes "
                                              "(CUDA only)")
    dist_timeout: float = option(1800.0, min=1.0, help="under torchrun: seconds a process waits for the others "
                                                       "before the job stops")


# What train.first_task may change: how the first task trains.  Settings of the whole run (device, threads,
# precision, augmentation, evaluation, checkpoints, optimizer_state) stay one value for every task.
FIRST_TASK_KEYS = ("epochs", "iterations", "batch_size", "optimizer", "lr", "momentum", "nesterov", "betas",
                   "weight_decay", "no_weight_decay", "clip_grad_value", "scheduler", "min_lr", "milestones", "gamma",
                   "warmup", "warmup_factor")


@dataclasses.dataclass
class OutputConfig:
    save_checkpoints: bool = option(True, help="checkpoint after every task (needed for --resume)")
    save_features: bool = option(True, help="save test features/predictions per task for reports")
    max_feature_samples: int = option(2000, min=0, help="test samples whose features are saved per task")
    loggers: list[str] = option(
        default_factory=lambda: ["csv"], help="where progress is logged: csv (log.csv, accuracy_matrix.csv), "
        "tensorboard (RUN_DIR/tensorboard; pip install 'cilearn[tensorboard]'), wandb (RUN_DIR/wandb; "
        "pip install 'cilearn[wandb]'), mlflow (a local store in RUN_DIR/mlflow, or MLFLOW_TRACKING_URI; pip "
        "install 'cilearn[mlflow]'), or a logger of an installed package (entry point group cilearn.loggers)")
    wandb_project: str = option("cilearn", help="the W&B project of loggers: [wandb]")
    wandb_entity: str | None = option(None, help="the W&B entity (team or user); default: W&B's own default")
    wandb_group: str | None = option(None, help="the W&B group; default: the config's name (a sweep's runs carry "
                                                "the sweep's name, an experiment's runs the experiment's)")
    wandb_tags: list[str] = option(default_factory=list, help="W&B tags of the run")
    wandb_name: str | None = option(None, help="the W&B run name; default: the run's label (method, /seedN)")
    mlflow_experiment: str | None = option(None, help="the MLflow experiment of loggers: [mlflow]; default: the "
                                                      "config's name")
    headline_accuracy: Literal["sample_weighted", "task_mean"] = option(
        "sample_weighted", help="the accuracy that last_accuracy, average_incremental_accuracy and the summary "
        "tables report: sample_weighted (all test images of the classes seen, one pool) or task_mean (the mean "
        "of the per-task accuracies over the tasks seen, as van de Ven & Tolias, Hsu et al. and Mammoth); "
        "metrics.json always holds both (*_sample_weighted, *_task_mean)")
    spread: Literal["std", "sem"] = option(
        "std", help="the ± of the summary tables over seeds: std (sample standard deviation) or sem (standard "
                    "error of the mean, std / sqrt(seeds), as van de Ven & Tolias report)")
