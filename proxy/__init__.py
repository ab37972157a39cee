"""The data plane: the token-validating gate, forwarding, metrics, and the process wiring (DESIGN §2)."""
