"""Tests of the ``trouper`` command line, run as a real process (marker ``e2e`` where the real
local model answers)."""
