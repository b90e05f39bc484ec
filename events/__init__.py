"""Events, their codec, and the append-only log backends."""
