"""The streaming service: config, protocol, sessions, transports, media, ops endpoints."""
