"""Small wording helpers shared by the commands' messages."""


def plural(n: int, noun: str) -> str:
    """``plural(1, "epoch") == "1 epoch"``, ``plural(3, "epoch") == "3 epochs"``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def subset_text(subset: int | None) -> str:
    """How a workload's ``subset`` reads in a heading: ``subset 2048``, or ``all images``."""
    return "all images" if subset is None else f"subset {subset}"


def format_value(v) -> str:
    """A hyperparameter value as tables, logs and specs print it: true/false (NumPy's booleans too),
    floats to 3 significant digits."""
    if isinstance(v, bool) or type(v).__name__ == "bool_":
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def format_or_dash(v, spec: str = "", unit: str = "") -> str:
    """``v`` formatted by ``spec`` (then ``unit``), or ``-`` where it has no value (None, NaN)."""
    return "-" if v is None or v != v else format(v, spec) + unit


def is_missing(v) -> bool:
    """None, a float NaN (NumPy's too) or pandas' NA: a cell with no value."""
    return v is None or isinstance(v, float) and v != v or type(v).__name__ == "NAType"


def json_value(v):
    """A table cell as JSON holds it: a missing value as null, a NumPy scalar as its Python value
    (``json.dumps`` would write NaN, which is not JSON); an infinite float as null too (JSON has none)."""
    v = None if is_missing(v) else v.item() if hasattr(v, "item") else v
    return None if isinstance(v, float) and v in (float("inf"), -float("inf")) else v


def json_records(records) -> list[dict]:
    """Records (``DataFrame.to_dict("records")``) with every cell as :func:`json_value` makes it."""
    return [{k: json_value(v) for k, v in r.items()} for r in records]
