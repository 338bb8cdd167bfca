"""Benchmarks: scripts that print numbers (run them with python bench/<name>.py)."""
