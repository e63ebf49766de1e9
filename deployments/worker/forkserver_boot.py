"""Imported first by the fork server, before its slow imports (deployments/worker/forkserver.py
puts it ahead of PRELOAD): from here on it dies with its worker, and so does each run it forks
(deployments/worker/lifeline.py). Nothing else imports it."""

from deployments.worker.lifeline import become_forkserver

become_forkserver()
