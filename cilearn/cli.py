"""The ``cilearn`` command line.

Every user mistake (a :class:`~cilearn.errors.CilearnError`) is printed as one ``error:`` line with exit
code 2 and no traceback; a traceback means a bug in cilearn.  What a command produces (``list``, the run
folder after ``done:``) is printed; everything else goes through :mod:`cilearn.log` (``--quiet``/``--verbose``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import sys
from pathlib import Path

import torch.distributed as dist

from . import __version__, bench
from .config import json_schema
from .data.registry import DATASETS
from .distributed import is_main
from .errors import CilearnError, did_you_mean
from .experiment import Experiment
from .log import NORMAL, QUIET, VERBOSE, setup_logging
from .loggers import LOGGERS
from .loggers import SETTINGS as LOGGER_SETTINGS
from .methods import METHODS
from .models.registry import MODELS
from .report import commands as report_commands
from .rundir import RunDir
from .schema import describe
from .sections import OutputConfig
from .shipped import configs_dir, list_configs
from .streams import STREAMS
from .sweep import commands as sweep_commands

# Modules that add sub-commands: each has register(subparsers) setting a ``handler`` default that imports
# its heavy dependencies (matplotlib, scikit-learn) only when that command runs.
EXTRA_COMMANDS = (bench, report_commands, sweep_commands)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own mistakes: same one-line form, exit 2
        match = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if match:  # an unknown sub-command: suggest the closest one
            choices = re.findall(r"'([^']*)'", match.group(2)) or [c.strip() for c in match.group(2).split(",")]
            raise CilearnError(f"unknown command '{match.group(1)}'.{did_you_mean(match.group(1), choices)} "
                               f"Commands: {', '.join(choices)}.")
        if message.endswith("required: command"):
            raise CilearnError(f"give a command, e.g. '{self.prog} run CONFIG' or '{self.prog} list' "
                               f"(see '{self.prog} --help').")
        raise CilearnError(f"{message} (see '{self.prog} --help').")


def build_parser() -> argparse.ArgumentParser:

    parser = _Parser(prog="cilearn", description="Class-incremental learning experiments from YAML configs.")
    parser.add_argument("--version", action="version", version=f"cilearn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run an experiment config (or resume one)")
    run.add_argument("config", nargs="?", help="YAML config, e.g. configs/quickstart.yaml, or a shipped config's "
                     "name (cilearn configs), e.g. quickstart; none: the config is the --set values alone")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set train.epochs=1 (repeatable)")
    run.add_argument("--out", help="output folder (default: runs/<config name>/<timestamp>); never overwritten")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a run directory from its last checkpoint")
    run.add_argument("--seeds", type=int, nargs="+", help="run these seeds (same as seeds: [...] in the config)")

    sub.add_parser("configs", help="list the configs shipped with cilearn (run one by name: cilearn run NAME)")
    lst = sub.add_parser("list", help="list datasets, models, methods, streams and loggers")
    lst.add_argument("--options", action="store_true", help="also show the options of each")
    schema = sub.add_parser("schema", help="print the JSON Schema of config files (for editors that check YAML)")
    schema.add_argument("--out", metavar="FILE", help="write it to FILE instead of printing it")
    for module in EXTRA_COMMANDS:
        module.register(sub)  # each module adds its sub-commands
    for command in [parser, *sub.choices.values()]:  # before or after the command: cilearn -q run ... / run ... -q
        quiet_or_verbose = command.add_mutually_exclusive_group()
        quiet_or_verbose.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                                      help="only warnings and errors (no progress lines or bars)")
        quiet_or_verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                                      help="also debug lines (what was loaded from where, cache hits, ...)")
    return parser


def verbosity(args: argparse.Namespace) -> int:
    quiet, verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)
    if quiet and verbose:
        raise CilearnError("give --quiet or --verbose, not both.")
    return QUIET if quiet else VERBOSE if verbose else NORMAL


def cmd_run(args) -> int:

    if args.resume:
        if args.config or args.overrides or args.out or args.seeds:
            raise CilearnError("--resume RUN_DIR takes no config, --set, --seeds or --out: a run continues "
                               "with the config saved in its folder.")
        args.run_dir = Path(args.resume)
        out = Experiment.resume(args.resume).path
    else:
        if not args.config and not args.overrides:
            raise CilearnError("give a config file (e.g. cilearn run configs/quickstart.yaml), a shipped config's "
                               "name (cilearn configs), --set values (e.g. --set data.name=digits --set "
                               "model.name=mlp --set method.name=finetune --set scenario.classes_per_task=2) or "
                               "--resume RUN_DIR.")
        overrides = list(args.overrides)
        if args.seeds:
            overrides.append(f"seeds=[{', '.join(str(s) for s in args.seeds)}]")
        if args.config:
            experiment = Experiment.from_yaml(args.config, overrides)
        else:  # a config made of --set values alone: runs/run/<timestamp> unless --set name=... or --out
            experiment = Experiment.from_dict({"name": "run"}, overrides)
        args.run_dir = Path(args.out) if args.out else experiment.default_out()  # Ctrl-C names it
        out = experiment.run_into(args.run_dir).path

    if is_main():
        print(f"done: {out}")
    return 0


def interrupted_message(run_dir: Path | None) -> str:
    """What Ctrl-C leaves behind, naming the real run folder."""

    if run_dir is not None and RunDir(run_dir).is_resumable():
        return (f"interrupted: finished tasks are saved; continue with: cilearn run --resume "
                f"{shlex.quote(str(run_dir))}")
    return "interrupted before the run started; nothing was written."


def cmd_list(args) -> int:
    """Every registered component by kind; with --options each one's options (type, default, help)."""
    methods = dict(sorted(METHODS.components().items()))
    output = {row[0]: row for row in describe(OutputConfig)}
    for title, components in (("datasets", DATASETS.components()), ("models", MODELS.components()),
                              ("methods", methods), ("streams (scenario.options.stream)", STREAMS.components()),
                              ("loggers (output.loggers)", LOGGERS.components())):
        print(f"{title}:")
        width = max(len(name) for name in components)
        for name, component in components.items():
            print(f"  {name:<{width}}  {component.description}")
            if not args.options:
                continue
            if component.paper:
                print(f"  {'':<{width}}    paper: {component.paper}")
            if component.options is not None:
                rows = describe(component.options)
            elif component.plugin:
                rows = [("options", "a mapping", {}, "passed to the plugin as written (it declares no Options)")]
            else:
                rows = [(f"output.{key}", *output[key][1:]) for key in LOGGER_SETTINGS.get(name, ())]
            for option, kind, default, help_text in rows:
                if option not in ("name", "stream"):
                    print(f"  {'':<{width}}    {option} ({kind}, default {default!r}) {help_text}")
    return 0


def cmd_configs(args) -> int:

    rows = list_configs()
    if not rows:
        raise CilearnError("no shipped configs found: this installation of cilearn has no configs folder.")
    width = max(len(name) for name, _ in rows)
    for name, text in rows:
        print(f"{name:<{width}}  {text}")
    print(f"({len(rows)} configs in {configs_dir()}; run one with: cilearn run NAME)")
    return 0


def cmd_schema(args) -> int:


    text = json.dumps(json_schema(), indent=2) + "\n"
    if not args.out:
        sys.stdout.write(text)
        return 0
    try:
        Path(args.out).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CilearnError(f"--out: cannot write '{args.out}' ({exc.strerror or exc}).") from None
    print(f"schema: {args.out}")
    return 0


class JobStopped(CilearnError):
    """torchrun stopped this process because another process of the job failed."""


def _stop_on_sigterm(args) -> None:
    """Under torchrun, a process that dies makes torchrun terminate the others: rank 0 says what happened and
    where the finished tasks are (files are written atomically, so nothing is left half-written)."""

    if "TORCHELASTIC_RUN_ID" not in os.environ and "LOCAL_RANK" not in os.environ:
        return

    def stop(signum, frame):
        raise JobStopped("another process of this torchrun job stopped, so torchrun ended this one.")

    signal.signal(signal.SIGTERM, stop)


def main(argv: list[str] | None = None) -> int:
    commands = {"run": cmd_run, "list": cmd_list, "schema": cmd_schema, "configs": cmd_configs}
    args = None
    log = setup_logging(NORMAL)  # errors while parsing the command line already need the console format
    try:
        args = build_parser().parse_args(argv)
        setup_logging(verbosity(args))
        _stop_on_sigterm(args)
        handler = getattr(args, "handler", None) or commands[args.command]
        return handler(args)
    except CilearnError as exc:
        message = " ".join(str(exc).split())  # always one line, whatever the message holds
        run_dir = getattr(args, "run_dir", None)
        if type(exc).__name__ in ("PeerLost", "JobStopped") and run_dir and "saved in" not in message:
            message += (f" Finished tasks are saved in '{run_dir}': continue with torchrun ... -m cilearn run "
                        f"--resume {run_dir}")
        log.error(message)  # rank 0 of a torchrun job alone prints (setup_logging)
        return exc.exit_code
    except BrokenPipeError:  # output piped into head & co. that stopped reading: not an error
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep Python's exit flush quiet
        except OSError:
            pass
        return 0
    except KeyboardInterrupt:
        print(interrupted_message(getattr(args, "run_dir", None)), file=sys.stderr)
        return 130
    finally:
        _leave_job()


def _leave_job() -> None:
    """After a torchrun job's command: a later SIGTERM from torchrun ends the process quietly, and the process
    group is closed (PyTorch warns about one left open)."""
    if "LOCAL_RANK" not in os.environ:
        return

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # a peer already gone: nothing left to close cleanly
        pass


if __name__ == "__main__":
    sys.exit(main())
