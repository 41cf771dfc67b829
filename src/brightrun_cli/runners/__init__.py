"""Launching the trainer: local subprocess or over SSH, behind one interface."""
