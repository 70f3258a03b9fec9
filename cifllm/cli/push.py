"""``cifllm push MODEL_DIR --repo org/name``: upload weights (safetensors), tokenizer, card and records to the Hub.

Examples::

    cifllm push exports/cifllm-base --repo org/cifllm-base --dry-run
    cifllm push exports/cifllm-base --repo org/cifllm-base --private
"""

from __future__ import annotations

import argparse

from cifllm.hub.push import push_to_hub


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", help="model folder with README.md (cifllm export + cifllm card)")
    p.add_argument("--repo", required=True, help="Hub model repository org/name (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--revision", default=None, help="branch to push to (default: main)")
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument("--token", default=None, help="Hub token (default: the logged-in token or $HF_TOKEN)")
    p.add_argument("--dry-run", action="store_true", help="list what would be uploaded and stop")


def run(args: argparse.Namespace) -> int:
    r = push_to_hub(
        args.model_dir, args.repo, token=args.token, private=args.private, revision=args.revision,
        commit_message=args.message, dry_run=args.dry_run,
    )
    verb = "would upload" if r.dry_run else "uploaded"
    print(f"{verb} {len(r.files)} files ({r.total_mb:.2f} MB) to {r.repo_id}{' (private)' if r.private else ''}:")
    for f in r.files:
        print(f"  {f}")
    for s in r.skipped:
        print(f"  skipped: {s}")
    if r.commit_url:
        print(f"commit: {r.commit_url}")
    return 0
