"""Sending the worker's tasks, in one place (the worker defines them in ``worker/tasks.py``).

- ``names``: the task and queue names both ends agree on; the API sends by name and never imports ``worker/``.
- ``broker``: the Celery client that sends them (``TaskQueue``) and the broker configuration.
- ``after_commit``: a task goes out only after the transaction that wrote its row has committed.
- ``admission``: per-project limits (jobs in flight, jobs queued, bytes stored) and the fair order in which
  waiting jobs are handed to the broker.
- ``sweep``: the periodic pass that requeues lost jobs and (re)sends what never reached the broker.
"""
