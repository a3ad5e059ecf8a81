"""mining building blocks."""
