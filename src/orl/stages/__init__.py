"""stages building blocks."""
