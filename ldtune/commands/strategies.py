"""``ldtune strategies``: the registered strategies, their hyperparameters (with units) and cards."""


def configure(p) -> None:
    p.add_argument("name", nargs="?", help="show one strategy's card")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import this module first, as a study's `plugins` list does (repeat for several)")


def main(a) -> int:
    from .. import strategies
    from ..text import format_value
    strategies.import_plugins(a.plugin, field="--plugin")
    names = [a.name] if a.name else sorted(strategies.REGISTRY)
    for n in names:
        cls = strategies.get(n)
        print(f"== {n}")
        if not cls.hparams:
            print("  no hyperparameters")
        for k, h in cls.hparams.items():
            rng = (f" {list(h.choices)}" if h.choices is not None else "" if h.kind is bool
                   else f" >= {h.low}" if h.high is None else f" <= {h.high}" if h.low is None
                   else f" [{h.low}, {h.high}]")
            what = f"{h.unit}: {h.help}" if h.help else h.unit
            print(f"  {k}: {h.kind.__name__}{rng}, default {format_value(h.default)} ({what})")
        if a.name:
            print(cls.card())
    return 0
