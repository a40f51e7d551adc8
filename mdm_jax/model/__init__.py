"""The networks: pure Flax Linen modules (params pytree in, arrays out) and the one sharding table."""
