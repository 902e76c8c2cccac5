"""End-to-end tests of the conversation stages on the real local model (marker ``e2e``)."""
