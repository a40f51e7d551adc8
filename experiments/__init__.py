"""Runnable experiments: the demo, benchmarks and sweeps (`python -m experiments.<name>`)."""
