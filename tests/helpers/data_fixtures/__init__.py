"""Small data files and helpers for tests/test_data_*.py (no real data needed)."""
