"""Hyperparameter sweeps: a search over spec paths whose trials are ordinary jobs, sampled and pruned by
Optuna (routes, schemas, service, repository, the space's checks, the study's storage)."""
