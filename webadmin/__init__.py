"""recorderd: webadmin layer (see docs/architecture.md)."""
