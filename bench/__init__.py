"""Benchmarks: measured against the Linux bridge in the same run, never timed tests."""
