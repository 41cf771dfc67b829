"""brightrun: command-line LoRA fine-tuning with a local registry."""

__version__ = "0.1.0"
