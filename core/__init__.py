"""Cross-cutting pieces shared by every package: errors, logging, paths."""
