"""Bare reference servers, each started by the bench in its own process."""
