"""methods building blocks."""
