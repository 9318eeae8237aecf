"""``finetune``: the command line, a package of its own beside ``app/`` (the service), ``worker/`` (the Celery
app) and ``training/`` (the engine). It is the one place that puts them together: ``finetune serve`` runs the API
and its workers in one go, ``finetune worker`` starts ``worker/``; the service itself never imports ``worker/``.

- ``main``: the ``finetune`` group, its global options, and the list of command groups it offers.
- ``commands/``: one module per command group. The client commands (``datasets``, ``jobs``, ``webhooks``) talk
  to a running service through ``app.client``; the service's own (``db``, ``keys``, ``store``, ``worker``,
  ``serve``) run on the service's host.
- ``options``: what every client command shares (``--json``, ``--quiet``, the client, the exit codes);
  ``output`` and ``follow``: how results and live jobs look to a person; ``specs``: a spec file as sent.
- ``serving`` and ``supervisor``: ``serve``'s ready block and the child processes it keeps running.

A new command group: a module in ``commands/`` and one ``main.add_command`` line in ``main``.
Startup imports only click: each command imports what it needs when it runs, so ``finetune --help`` answers at
once (no FastAPI, SQLAlchemy or torch).
"""
