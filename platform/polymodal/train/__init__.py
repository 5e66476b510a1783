"""The one train loop every task runs: Ray Train + DeepSpeed, or ``--local``."""
