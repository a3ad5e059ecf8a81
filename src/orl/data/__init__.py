"""data building blocks."""
