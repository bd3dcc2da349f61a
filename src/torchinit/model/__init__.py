"""Whole models: policies and presets, ``deferred()`` and ``materialize_`` (plain and sharded), re-enactment and
replay of a model's own init, stand-ins, snapshots and fingerprints. See ``docs/architecture.md``."""
