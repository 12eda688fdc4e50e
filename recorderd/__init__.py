"""recorderd: recorderd layer (see docs/architecture.md)."""
