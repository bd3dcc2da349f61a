"""The package version, in one place (the public name is ``torchinit.__version__``)."""

__version__ = "0.1.0"
