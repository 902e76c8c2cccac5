"""Tests of the conversation stages (actors): text, tools, interruption, metrics, errors."""
