"""fsspec-backed blob store for dataset files, checkpoints and adapters."""

from brightrun_cli.storage.blobstore import BlobStore, check_key

__all__ = ["BlobStore", "check_key"]
