"""Subcommands of `recorderd`: each module has `register(subparsers)` that adds its parsers,
each parser with `set_defaults(run=function)`; the function takes the parsed arguments and
returns the exit status (0 ok, 1 a check found a problem, 2 bad usage)."""
