"""Benchmarks and the chaos run: programs that print numbers; none is a test."""
