"""Model providers: ``anthropic_api`` (the SDK through the credential proxy) and ``scripted``
(deterministic playback for tests and benchmarks). Both return ``ModelResponse`` to the same
tool loop."""
