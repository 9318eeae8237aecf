"""The ``finetune`` command groups, one module each; ``cli.main`` adds them to ``finetune``.

Each imports only click at startup; a command imports the client, ``cli.output`` and ``cli.follow`` (rich) or
the service's modules when it runs, so ``finetune --help`` stays instant and no command imports torch.
"""
