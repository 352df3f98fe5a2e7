"""Sweeps: each job isolated in a fresh process, resumable, aggregated into one table and picture."""
