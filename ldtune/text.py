"""Small wording helpers shared by the commands' messages."""


def plural(n: int, noun: str) -> str:
    """``plural(1, "epoch") == "1 epoch"``, ``plural(3, "epoch") == "3 epochs"``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def subset_text(subset: int | None) -> str:
    """How a workload's ``subset`` reads in a heading: ``subset 2048``, or ``all images``."""
    return "all images" if subset is None else f"subset {subset}"
