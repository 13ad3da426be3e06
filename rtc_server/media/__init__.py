"""Media: WebRTC playout pacing and track, in-process fMP4 encoding for the WebSocket/MSE path."""
