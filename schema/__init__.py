"""SQL schemas, shipped as package data (``nanoclaw_schema``) so the host and the agent image
read the same files. ``central/NNNN_name.sql`` are the central DB's migrations."""
