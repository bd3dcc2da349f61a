"""Small helpers every layer may use: argument checks, text tables, warnings, the version.

Imports nothing of torchinit."""
