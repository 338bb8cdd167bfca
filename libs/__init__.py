"""mailbus shared libraries."""
