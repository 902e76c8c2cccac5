"""Example applications built on trouper (run each as its docstring says)."""
