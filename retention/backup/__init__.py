"""Offsite backup and restore: targets, incremental runs, catalog snapshots, restore, verify.

Pure planning (`plan`, `targets`, `manifest`) is kept apart from the I/O that acts on it
(`snapshot`, `remotes`, `runner`, `restore`, `verify`, `records`). See docs/architecture.md,
"Offsite backup and restore".
"""
