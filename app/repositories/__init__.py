"""Queries, one module per resource: the only place that builds SQL for it."""
