"""Timing benchmarks of the isometry library (not part of the installed package)."""
