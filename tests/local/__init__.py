"""Tests of the embedded local model: pull, llama-server lifecycle, CLI, end-to-end."""
