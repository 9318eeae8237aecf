"""The ``finetune`` command groups, one module each; ``cli.main`` adds them to ``finetune``.

Each imports only click at startup; a command imports the client, ``cli.output`` and ``cli.follow`` (rich) or
the service's modules when it runs, so ``finetune --help`` stays instant and no command imports torch.

A client command, whole: a client method, and ``options.show`` for ``--json`` and for a person::

    @jobs.command("get")
    @click.argument("job_id")
    @json_option
    @pass_options
    def get_job(options: GlobalOptions, job_id: str) -> None:
        from cli.output import job_view

        with options.client() as client:  # a client error exits with its code (cli.options)
            job = client.jobs.get(job_id)
        options.show(job, job_view)
"""
