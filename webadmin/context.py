"""What the console needs from the appliance, handed to the app factory by the composition root.

webadmin/ may not import recorderd/ (tests/test_layering.py), so `recorderd web` opens the
stores (recorderd.appliance.open_appliance) and passes them here; the app keeps the context in
``flask.current_app.extensions["recorderd"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import current_app

from storage.audit import AuditLog
from storage.catalog import Catalog
from storage.keys import KeyStore

EXTENSION_KEY = "recorderd"


@dataclass
class ConsoleContext:
    catalog: Catalog
    audit: AuditLog
    keys: KeyStore
    vault_dir: Path
    config: dict[str, dict[str, Any]]   # the full validated configuration (recorderd/config.py)


def current_context() -> ConsoleContext:
    """The context of the app handling the current request."""
    ctx = current_app.extensions.get(EXTENSION_KEY)
    if not isinstance(ctx, ConsoleContext):
        raise RuntimeError("the console app was not created by webadmin.app.create_app")
    return ctx
