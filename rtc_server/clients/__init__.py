"""Headless clients of the service, for tests and load tools."""
