"""One module per ``ldtune`` subcommand (see ``ldtune.cli``)."""
from __future__ import annotations

import warnings
from pathlib import Path


def import_study_plugins(directory) -> None:
    """Import the ``plugins`` of every study under ``directory`` (its ``study.yaml``, which the runner
    saves), so that a query shows their strategies' hyperparameters and cards as it does the built-in
    ones. One that cannot be imported here is a warning: the Parquet files still answer the query."""
    import yaml
    try:
        from ..strategies import import_plugins
    except ImportError:  # the registry needs torch; the Parquet query does not
        return
    from ..errors import UserError
    root = Path(directory)
    paths = [root / "study.yaml"] if (root / "study.yaml").is_file() else sorted(root.rglob("study.yaml"))
    done = set()
    for path in paths:
        try:
            modules = (yaml.safe_load(path.read_text()) or {}).get("plugins") or []
            modules = [modules] if isinstance(modules, str) else modules
        except (OSError, yaml.YAMLError, AttributeError):
            continue  # not a spec the runner wrote: the Parquet files are what the query reads
        for module in modules:
            if module in done:
                continue
            done.add(module)
            try:
                import_plugins([module], field=f"{path}: plugins")
            except UserError as e:
                warnings.warn(f"{e.field}: {e.message}; its strategies show as their trials recorded them", stacklevel=2)
