"""The producer side of `ingest`: a client that sends runs (`producer`), and the entities to send
(`generate`: a seeded generator of NetBox-like entities, and a JSON Lines reader)."""
