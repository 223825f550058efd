"""prm-suite."""
