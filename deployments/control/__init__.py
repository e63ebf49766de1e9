"""The control plane: what Prefect holds for us and the calls that change it.

Declarations (the queue table, the job catalogue, the state table, automations, the maintenance
schedule, the pools' job template) and the calls the CLI and the shim share: enqueue, pause,
bootstrap. Nothing here starts a process.
"""
