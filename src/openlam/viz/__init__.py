"""Figures made from datasets and runs (each has a CLI command that regenerates it)."""
