"""Helpers shared by the integration tests: sinks, stream readers, polling."""
