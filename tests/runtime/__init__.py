"""Tests of the domain-free actor runtime."""
