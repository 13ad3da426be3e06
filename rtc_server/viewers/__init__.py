"""Viewers of a session: watch tokens and the fMP4 watch socket (``GET /v1/sessions/{id}/watch``)."""
