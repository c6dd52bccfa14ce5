"""The credential proxy (``nanoclaw-proxy``): containers reach the model API only through it;
it swaps each run's token for the real key, forwards, meters tokens per agent group and
enforces the daily budget (``app``, ``metering``)."""
