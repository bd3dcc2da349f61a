"""Signal diagnostics: ``probe`` and ``jacobian_spectrum`` (``probing``), LSUV (``lsuv``), scheme comparison
(``compare``), training experiments (``trainability``), the demo models (``models``) and figures (``plots``)."""
