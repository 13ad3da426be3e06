"""Load testing with headless clients: python -m rtc_server.loadtest."""
