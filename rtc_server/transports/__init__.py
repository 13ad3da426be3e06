"""Transports: WebRTC and WebSocket front ends over one SessionController."""
