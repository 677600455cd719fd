"""The CLI commands that sit on top of everything (the demo and ``recommend``): layer 7 with ``app.py``."""
