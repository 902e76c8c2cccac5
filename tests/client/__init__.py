"""Tests of the OpenAI-compatible streaming client (actors.client) and its test kit server."""
