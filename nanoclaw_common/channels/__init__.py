"""Channel adapters: one module per platform, inbound and outbound halves."""
