"""`streams chaos`: kill -9 trials at scale (not part of the test suite).

    schedule.py  pure: a trial's configuration, the kill schedule, when runs are sent
    rates.py     pure: polls of ingestion_logs, busy-time rates and their ratio
    verdicts.py  pure: the fault model's view of errored rows, completions, the checks
    probe.py     reads: Postgres state counts, the target's tables and counters, the consumer
                 group, completions, offsets left unread, the run events of unfinished runs
    fleet.py     the workers (start, kill -9, replace) and the dev broker and Postgres (restart)
    trial.py     one trial from a fresh database to its checks

The command is streams/cli/chaos.py.
"""
