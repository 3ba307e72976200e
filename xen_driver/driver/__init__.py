"""The driver domain: configuration, task models, errors and the core behind the Driver service."""
