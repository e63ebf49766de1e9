"""Imported first by the fork server, before its slow imports (deployments/worker/forkserver.py
puts it ahead of PRELOAD): from here on it dies with its worker, and so does each run it forks
(deployments/worker/lifeline.py).

Only in a process whose parent is the worker that named itself its owner: anything else that
imports every module (a test walking the packages) must not turn itself into a fork server.
"""

import os

from deployments.worker.lifeline import OWNER_VARIABLE, become_forkserver

if os.environ.get(OWNER_VARIABLE) == str(os.getppid()):
    become_forkserver()
