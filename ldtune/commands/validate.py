"""``ldtune validate STUDY.yaml``: check a study spec without running it (nothing is written): its
fields, and where this machine holds its data, subset within the dataset (a test_subset above the
test set's size is a warning)."""
from __future__ import annotations


def configure(p) -> None:
    p.add_argument("spec", metavar="STUDY.yaml", help="study spec to check")


def main(a) -> int:
    from .. import study as study_mod

    s = study_mod.load(a.spec)
    study_mod.check_data(s, trials_here=False)  # a cluster's spec may name data only its nodes hold
    print(study_mod.summary(s))
    print(f"{a.spec}: ok")
    return 0
