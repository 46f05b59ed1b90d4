"""Stage-1 training engine: single process or torchrun DDP, AMP, EMA, checkpoints with exact resume."""
