"""Small shared helpers: atomic writes, hashing, logging."""

from cifllm.utils.files import append_jsonl, atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file

__all__ = ["append_jsonl", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "sha256_file"]
