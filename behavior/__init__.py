"""behavior package."""
