"""Bytes from the outside world to typed, normalised events: the model, wire formats, sources."""
