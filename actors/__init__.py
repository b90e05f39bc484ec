"""Ray actors that own agent sessions."""
