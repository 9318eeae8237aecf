"""The ``finetune`` commands that talk to a running service through ``app.client``: ``datasets`` and ``jobs``.

``datasets``, ``jobs`` and ``options`` import only click at startup; a command imports the client,
``output`` and ``follow`` (rich) when it runs, so ``finetune --help`` stays instant and no command imports torch.
"""
