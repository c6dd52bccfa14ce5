"""What more than one NanoClaw program needs: settings, stores, message types, channels,
the sandbox, logging. Keep imports here light: the agent runner inside the container imports
this package too, and must not pay for the channel libraries."""
