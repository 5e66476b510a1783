"""Serve applications importable as ``serve.<name>:app_builder`` with working_dir = repo root."""
