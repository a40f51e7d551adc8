"""Training: what each stage minimises, the sharded step, the loop, data, checkpoints, self-distillation."""
