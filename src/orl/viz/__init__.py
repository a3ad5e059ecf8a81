"""viz building blocks."""
