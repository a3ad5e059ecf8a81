"""train building blocks."""
