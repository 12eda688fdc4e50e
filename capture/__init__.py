"""recorderd: capture layer (see docs/architecture.md)."""
