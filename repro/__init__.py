"""Reproducibility harness for CDUL (ICCV 2023): pipeline stages and their library code."""
