"""Builders shared by several test directories (import as `tests.helpers.<module>`)."""
