"""Engines that run the shards of a sharded job elsewhere than in this process.

:mod:`fastfeat.engines.ray_engine` runs each shard as a Ray task (``pip install "fastfeat[ray]"``).
Importing this package imports nothing heavy; Ray is imported by the engine module only.
"""
