"""Demo data and feed for the livestream ingester."""
