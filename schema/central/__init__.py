"""Central DB migrations, applied in file-name order."""
