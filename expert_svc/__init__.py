"""Expert service: serves one LLM behind the Expert gRPC service."""
