"""trouper's test suite (a package, so that ``tests/conftest.py`` and the conftest modules of the
sub-packages get distinct module names)."""
