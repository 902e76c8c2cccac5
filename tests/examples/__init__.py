"""The example applications (examples/), run as their users would run them."""
