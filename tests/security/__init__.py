"""Attacks from inside a real container against a real stack (see conftest.py)."""
