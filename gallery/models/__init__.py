"""Models: checkpoints and their safe reading, networks, adapters, Stable-Baselines3 zips,
and the `Policy` every command runs."""
