"""Batch jobs: many users through the graph, resumable, locally or on Ray (``batch.runner``)."""
