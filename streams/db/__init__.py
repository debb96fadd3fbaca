"""The Postgres seam: connections, named queries from sql/, migrations."""
