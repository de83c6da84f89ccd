"""``ldtune run STUDY.yaml``: run a study on Ray Tune and write its Parquet results; exit status 1
if any trial failed (status ``error``; the others are kept), 2 for bad input, 130 if interrupted."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ..text import plural


def configure(p) -> None:
    p.add_argument("spec", metavar="STUDY.yaml", help="study spec (see studies/quickstart.yaml)")
    p.add_argument("--output", default="results", metavar="DIR",
                   help="results directory: DIR/<study name>/{trials,epochs,pareto}.parquet (default: results)")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster to use ('auto' on a cluster node; default: RAY_ADDRESS, else a local instance)")
    p.add_argument("--resume", action="store_true",
                   help="finish an interrupted study in DIR: finished trials are kept; the rest, and any "
                        "that failed, run")


def main(a) -> int:
    from .. import study as study_mod
    from ..runner import CONFIG_FILE, run_study, trial_ids

    study = study_mod.load(a.spec)
    # the command to finish it, on the same cluster (without --address it would start a local Ray)
    address = f" --address {shlex.quote(a.address)}" if a.address else ""
    resume = f"`ldtune run {shlex.quote(a.spec)} --output {shlex.quote(a.output)}{address} --resume`"
    remaining = f"interrupted; {resume} runs the remaining trials"
    try:
        outcome = run_study(study, a.output, address=a.address, resume=a.resume, interrupted_note=remaining)
    except KeyboardInterrupt:
        study_dir = Path(a.output) / study.name
        if not (study_dir / CONFIG_FILE).is_file():
            print("interrupted before the study started; nothing was written", file=sys.stderr)
        elif _all_saved(study, study_dir):  # Ctrl-C as the driver shut down, after the last trial
            print(f"interrupted as the study ended; every trial is finished and saved in {study_dir}, "
                  f"nothing is left to run", file=sys.stderr)
        else:
            print(f"interrupted; the finished trials are in {study_dir}; {resume} runs the rest", file=sys.stderr)
        return 130
    if outcome.interrupted:
        print(remaining, file=sys.stderr)
        return 130
    print(f"results: {outcome.study_dir}/trials.parquet, epochs.parquet, pareto.parquet "
          f"(ldtune pareto {a.output})")
    failed = set(outcome.trials.loc[outcome.trials["status"] == "error", "trial_id"])
    if failed:  # the study went on around them, but a script running it should know
        kept = failed - trial_ids(study)  # outside a budget made smaller
        if not kept:
            again = f"{resume} runs them again"
        elif kept == failed:
            again = f"they are outside the spec's trial budget, so {resume} leaves them as they are"
        else:
            again = f"{resume} runs them again, except {', '.join(sorted(kept))} (outside the spec's trial budget)"
        print(f"{len(failed)} of {plural(len(outcome.trials), 'trial')} failed; "
              f"their errors are in the error column of trials.parquet; {again}", file=sys.stderr)
        return 1
    return 0


def _all_saved(study, study_dir: Path) -> bool:
    """Whether ``--resume`` would run nothing (its own rule: failed trials run again); False where
    the saved files cannot be read."""
    from ..errors import UserError
    from ..runner import left_to_run
    try:
        return not left_to_run(study, study_dir).slots
    except (UserError, OSError):
        return False
