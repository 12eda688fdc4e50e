"""What the subcommands share: exit statuses and the usage error."""

from __future__ import annotations

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2
DEFAULT_CONFIG = "/etc/recorderd/recorderd.toml"


class UsageError(Exception):
    """Bad arguments or an unusable setup: exit status 2 with the message."""
