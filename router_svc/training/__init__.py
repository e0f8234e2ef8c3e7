"""Training and evaluation of the prompt classifier (needs the `train` extra; never imported to serve)."""
