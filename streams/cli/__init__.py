"""The `streams` command line. Entry point: streams.cli.main:main."""
