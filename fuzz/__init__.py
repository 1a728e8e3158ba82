"""Fuzzing entry points (atheris); see fuzz/core_fuzz.py."""
