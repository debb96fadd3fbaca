"""`streams status`: what workers publish about themselves (report, publisher) and what the
command gathers from Kafka, Postgres and those reports (collect) and prints (render)."""
