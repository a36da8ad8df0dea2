"""Runtime set-up: XLA compile options and device meshes / sharding rules."""
