"""The job vocabulary, at the bottom of the house: job types and options, the error tree,
settings, the inventory model, callers and roles.

Every other package imports these; this package imports nothing of ours outside it (the
`core` contract in pyproject.toml). Plain pydantic and PyJWT: no Prefect, no SSH.
"""
