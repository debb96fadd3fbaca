"""How agents, topics and tiers are wired for a deployment. `streams worker --topology NAME`."""
