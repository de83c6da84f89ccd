"""One module per ``ldtune`` subcommand (see ``ldtune.cli``)."""
