"""Loading this file puts tests/ on sys.path (pytest's default import mode inserts a conftest's folder), so
that the shared helper modules here (``fakehub``, ``process_support``) import by name also when only
tests under tests/realhub/ are run."""
