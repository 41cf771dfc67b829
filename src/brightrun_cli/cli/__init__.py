"""The command line: one module per command group. Parse, call one service, render."""
