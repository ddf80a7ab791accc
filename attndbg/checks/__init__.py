"""Checks, one module per stage (family). Importing a module registers its checks."""
