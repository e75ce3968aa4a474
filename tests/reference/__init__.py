"""Independent NumPy reference calculations used by the tests (no jaxdrr transport code)."""
