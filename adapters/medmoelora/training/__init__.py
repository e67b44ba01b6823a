"""Multi-task training of every method with transformers' Trainer (Accelerate underneath)."""
