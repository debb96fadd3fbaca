"""streams: a Kafka-native ingestion reconciler."""

__version__ = "0.1.0"
