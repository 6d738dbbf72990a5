"""Thin I/O glue, one module per rule file (rules/<stage>.smk -> steps/<stage>.py)."""
