"""Fixtures of the diffusion tests (each runs on one torch thread: tests/conftest.py, ONE_THREAD_DIRS)."""
