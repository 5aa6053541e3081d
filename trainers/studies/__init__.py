"""Studies: protocols that train many models and write one result file (seed 002 toy study, ...)."""
