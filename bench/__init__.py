"""Benchmarks: they print numbers; none is a test."""
