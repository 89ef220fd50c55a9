"""The bundled demo (``make demo``) and the process helpers it shares with the test suite."""
