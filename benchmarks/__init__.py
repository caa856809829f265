"""Benchmarks of ivon-optax: step time and memory against AdamW, SGD and the PyTorch reference."""
