"""Router service: classifies prompts and relays streams to experts."""
