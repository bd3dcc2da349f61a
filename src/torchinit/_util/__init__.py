"""Small helpers every layer may use: argument checks, what torch's stubs cannot say about tensors, text tables,
warnings, the version.

Imports nothing of torchinit."""
