"""The appliance's stores, opened together from the configuration: keys, catalog, audit, vault.

Opening checks what must hold before anything is recorded or read: the key directory is
root-only (storage.keys refuses otherwise), the catalog opens (migrations applied), and
recordings a crash left active are recovered as partial. A catalog on an unencrypted volume
gets a warning on stderr (it holds metadata in the clear). A recorder (recover=True) also
takes the vault's writer lock first.
"""

from __future__ import annotations

import fcntl
import getpass
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from storage.agents import AGENT_SOURCES, AgentMapping
from storage.audit import AuditLog
from storage.catalog import Catalog, storage_encryption_warning
from storage.keys import KeyDirError, KeyStore, verify_signature
from storage.recovery import Recovered, recover_crashed


class ApplianceError(Exception):
    """The stores cannot be opened; the message says which and why."""


@dataclass
class Appliance:
    config: dict[str, dict[str, Any]]
    keys: KeyStore
    catalog: Catalog
    audit: AuditLog
    vault_dir: Path
    recovered: list[Recovered] = field(default_factory=list)
    writer_lock: int | None = None

    def close(self) -> None:
        self.catalog.close()
        if self.writer_lock is not None:
            os.close(self.writer_lock)   # releases the flock
            self.writer_lock = None

    def __enter__(self) -> Appliance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cli_actor() -> str:
    """Who runs a command line: the OS user (the console has its own users)."""
    try:
        return f"{getpass.getuser()}@cli"
    except (KeyError, OSError):
        return "unknown@cli"


def open_appliance(config: dict[str, dict[str, Any]], *, recover: bool = True,
                   warnings: TextIO | None = sys.stderr) -> Appliance:
    storage = config["storage"]
    try:
        keys = KeyStore(Path(storage["key_dir"]))
    except KeyDirError as err:
        raise ApplianceError(f"storage.key_dir: {err}") from err
    catalog_path = Path(storage["catalog"])
    if not catalog_path.parent.is_dir():
        raise ApplianceError(f"storage.catalog: directory {catalog_path.parent} does not exist")
    try:
        agents = AgentMapping.from_settings(storage["agent_source"], storage["agent_header"],
                                            storage["agent_extensions"])
    except ValueError as err:
        setting = "agent_source" if storage["agent_source"] not in AGENT_SOURCES else "agent_extensions"
        raise ApplianceError(f"storage.{setting}: {err}") from err
    catalog = Catalog(catalog_path, agents=agents)
    audit = AuditLog(catalog, sign=keys.sign, checkpoint_every=config["audit"]["checkpoint_every"],
                     checkpoint_seconds=config["audit"]["checkpoint_seconds"])
    vault_dir = Path(storage["vault_dir"])
    vault_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if warnings is not None:
        warning = storage_encryption_warning(catalog_path)
        if warning:
            print(f"recorderd: warning: {warning}", file=warnings)
    appliance = Appliance(config, keys, catalog, audit, vault_dir)
    if recover:
        try:
            appliance.writer_lock = take_writer_lock(vault_dir)
        except ApplianceError:
            catalog.close()
            raise
        appliance.recovered = recover_crashed(catalog, keys, vault_dir, audit)
    return appliance


def take_writer_lock(vault_dir: Path) -> int:
    """One recorder writes a vault at a time (the daemon, or replay --store): only the holder
    may treat `active` rows as left over by a crash and recover them."""
    path = vault_dir / ".writer.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as err:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ApplianceError(f"storage.vault_dir: another recorder (pid {holder}) is writing to {vault_dir}") from err
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def signature_checker(keys: KeyStore) -> Any:
    public = keys.signing_public_key()
    return lambda data, signature: verify_signature(public, data, signature)
