"""Benchmarks and the chaos run: programs that print numbers (`python bench/<name>.py`); none is a test."""
