"""The ``rewardhub`` command: one module per core subcommand, each with ``add_parser`` and ``run``; plugins add
theirs through ``rewardhub_register_commands`` (see :mod:`rewardhub.cli.main`)."""
