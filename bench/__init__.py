"""Benchmarks of retrier: run them with bench/run."""
