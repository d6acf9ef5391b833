"""Broker side: embedded Kafka-protocol broker, topics, wire formats, client config (no torch)."""
