"""``ldtune`` command line. Each subcommand lives in ``ldtune.commands.<name>`` with
``configure(parser)`` and ``main(args) -> int``; bad input (a :class:`UserError`) exits 2 with one
message naming the field."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from pathlib import Path

from . import __version__
from .errors import UserError, check_env

_PACKAGE = Path(__file__).resolve().parent

COMMANDS = {
    "train": "one training run of one strategy",
    "bench": "baseline and strategies on one workload, interleaved: time_saved vs flops_saved",
    "run": "run a study (Ray Tune + Optuna) and write its Parquet results",
    "validate": "check a study spec without running it",
    "pareto": "accuracy-vs-speedup Pareto fronts of the studies under a directory",
    "plot": "plot the fronts (and per-epoch curves) to a PNG",
    "recommend": "default hyperparameters per strategy for a new dataset",
    "strategies": "list the registered strategies and their cards",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: status 2, one line
        sys.stderr.write(f"ldtune: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ldtune", description="Layer-dropping and layer-freezing studies for CNN training.")
    p.add_argument("--version", action="version", version=f"ldtune {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, help_ in COMMANDS.items():
        try:
            mod = importlib.import_module(f"ldtune.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"ldtune.commands.{name}":
                raise
            continue
        sp = sub.add_parser(name, help=help_, description=help_)
        mod.configure(sp)
        sp.set_defaults(_main=mod.main)
        if getattr(mod, "FIELDS_ARE_FLAGS", False):  # its errors' bare field names are its flags' dests
            sp.set_defaults(_flags={a.dest: a.option_strings[0] for a in sp._actions if a.option_strings})
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        """ldtune's own warnings (advice on a spec or a run) as one line; others as before."""
        if issubclass(category, UserWarning) and Path(filename).resolve().is_relative_to(_PACKAGE):
            (file or sys.stderr).write(f"ldtune: warning: {message}\n")
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        check_env()  # before anything runs: a bad one would otherwise fail mid-run, or in every trial
        code = int(args._main(args) or 0)
        sys.stdout.flush()  # a reader that stopped early (`| head`) shows here, not at exit
        return code
    except BrokenPipeError:  # the reader of stdout went away: the rest of the output is unwanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 141  # as a shell reports a command ended by SIGPIPE
    except UserError as e:
        field = getattr(args, "_flags", {}).get(e.field, e.field)  # `--batch-size`, not `batch_size`
        sys.stderr.write(f"ldtune: error: {field}: {e.message}\n")
        return 2
    except FileNotFoundError as e:
        sys.stderr.write(f"ldtune: error: {e.filename or e}: no such file\n")
        return 2
    except KeyboardInterrupt:  # Ctrl-C before a command's own handling (importing torch takes seconds)
        sys.stderr.write("ldtune: interrupted\n")
        return 130
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
