"""Tests written to kill mutants that the rest of the suite let survive (bench/mutation.py)."""
