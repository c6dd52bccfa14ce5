"""The agent runner: the program inside each session's container. It picks up the session's
inbound rows (``runner``), answers them with the model and its tools (``turn``, ``tools``,
``providers``) and writes outbound rows and acks; ``__main__`` is the console script
``nanoclaw-agent-runner``."""
