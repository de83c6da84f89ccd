"""One module per ``ldtune`` subcommand (see ``ldtune.cli``)."""
from __future__ import annotations

import warnings
from pathlib import Path


def import_study_plugins(directory) -> None:
    """Import the ``plugins`` of every study under ``directory`` (its ``study.yaml``, which the runner
    saves), so that a query shows their strategies' hyperparameters and cards as it does the built-in
    ones. One that cannot be imported here is a warning: the Parquet files still answer the query."""
    try:
        from ..strategies import import_plugins
    except ImportError:  # the registry needs torch; the Parquet query does not
        return
    from ..errors import UserError
    root = Path(directory)
    paths = [root / "study.yaml"] if (root / "study.yaml").is_file() else sorted(root.rglob("study.yaml"))
    done = set()
    for path in paths:
        spec = read_spec(path, warn=False)  # a query of the Parquet files needs no spec
        modules = (spec.get("plugins") or []) if spec is not None else []
        modules = [modules] if isinstance(modules, str) else modules
        if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
            warnings.warn(f"{path}: plugins is not a list of module names; skipped", stacklevel=2)
            continue
        for module in modules:
            if module in done:
                continue
            done.add(module)
            try:
                import_plugins([module], field=f"{path}: plugins")
            except UserError as e:
                warnings.warn(f"{e.field}: {e.message}; its strategies show as their trials recorded them", stacklevel=2)


def read_spec(path: Path, warn: bool = True) -> dict | None:
    """A study's saved ``study.yaml`` as a mapping, or None (with a warning naming the file, if
    ``warn``) where it cannot be read or is not a spec: the Parquet files, not the spec, are what a
    query reads."""
    import yaml
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        why = f"cannot be read ({type(e).__name__})"
    else:
        if spec is None or (isinstance(spec, dict) and isinstance(spec.get("workload") or {}, dict)):
            return spec or {}
        why = "not a study spec (a mapping with a workload mapping)"
    if warn:
        warnings.warn(f"{path}: {why}; skipped", stacklevel=3)
    return None
