"""Zone 2: the gateway agents reach instead of the world (vault proxy)."""
