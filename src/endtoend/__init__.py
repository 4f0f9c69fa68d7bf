"""endtoend."""
