"""bench building blocks."""
