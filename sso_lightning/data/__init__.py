"""Prompts, principles, steered prompts, snapshots and the DataModule."""
