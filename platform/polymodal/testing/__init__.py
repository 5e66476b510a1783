"""Helpers for tests and demos: nothing here runs in a training or serving path."""
