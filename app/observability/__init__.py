"""What the service tells its operators: structured logs, worker heartbeats and Prometheus metrics."""
