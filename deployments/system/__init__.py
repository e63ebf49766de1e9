"""The processes of a stack: the Prefect server, the workers and the shim, supervised by `make up`
(stack, up), with the backends they run on and the local demo target."""
