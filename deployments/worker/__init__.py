"""The `forkserver` worker type, loaded by Prefect through pyproject.toml's `prefect.collections`
entry point: a Prefect process worker whose runs fork from a preloaded server."""
