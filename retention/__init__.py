"""recorderd: retention layer (see docs/architecture.md)."""
