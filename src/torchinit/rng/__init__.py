"""The random-number subsystem: the keyed Philox stream (``keyed``, its C kernel and thread pool), the sampling
layer every random draw goes through (``sampling``), stream and seed derivation (``seeds``) and large chunked fills
(``fastfill``). See ``docs/keyed_rng.md``."""
