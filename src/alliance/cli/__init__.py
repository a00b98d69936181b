"""The alliance command line."""
