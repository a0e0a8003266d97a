"""The deployed runtime: loads a convpipe artifact and runs it with the TVM runtime and NumPy only."""
