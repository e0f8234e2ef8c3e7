"""The load generator behind `expert-router bench`: closed-loop users or open-loop arrivals over
several worker processes, with TTFT, inter-token and end-to-end latency percentiles per level.

Import the submodules directly: `runner.LoadGenerator` runs levels, `stats` holds the arithmetic,
`report` the table, JSON and plots, `prompts` the built-in prompt set.
"""
