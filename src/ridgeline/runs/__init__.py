"""Training runs as Optuna trials: the run ledger (every storage write) and where runs execute."""
