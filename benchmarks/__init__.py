"""Benchmarks of ivon-optax: train-step time and memory against AdamW, SGD and the PyTorch reference."""
