"""``python -m cli``: the ``finetune`` command, where the entry point is not installed."""

from cli.main import main

main()
