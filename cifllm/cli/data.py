"""``cifllm data``: build the corpus (``cifllm data [--config YAML] [key=value ...]``), list the registry
(``--list``), verify local files against registry checksums (``--verify``), or download (``--download NAME``)."""

from __future__ import annotations

import argparse
import json

from cifllm.cli.common import add_config_arguments, config_from_args
from cifllm.data.download import download_dataset, verify_dataset
from cifllm.data.prep import PrepConfig, prepare_corpus
from cifllm.data.registry import load_registry, resolve_data_dir

CONFIG = PrepConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, CONFIG, example="data_prep/pooled.yaml")
    p.add_argument("--list", action="store_true", help="list registry entries and exit")
    p.add_argument("--verify", action="store_true", help="check local files against registry SHA-256 and exit")
    p.add_argument("--download", metavar="DATASET", default=None, help="download a dataset's files (with checksum) into data_dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(CONFIG, args)
    registry = load_registry(cfg.registry) if cfg.registry else load_registry()
    if args.list:
        for name, s in registry.items():
            print(f"{name:26s} {s.kind:10s} {len(s.files):2d} file(s)  {s.licence}")
        return 0
    if args.verify or args.download:
        data_dir = resolve_data_dir(cfg.data_dir or None) if args.verify else (cfg.data_dir or None)
        if args.download:
            for path in download_dataset(registry.get(args.download, args.download), data_dir or "data/raw"):
                print(f"ok {path}")
            return 0
        bad = 0
        for spec in registry.values():
            for row in verify_dataset(spec, data_dir):
                print(f"{row['status']:9s} {spec.name:24s} {row['path']}")
                bad += row["status"] not in ("ok", "no_sha")
        return 1 if bad else 0
    res = prepare_corpus(cfg, progress=not args.no_progress)
    rep = res.report
    print(json.dumps({k: rep[k] for k in ("rows_in", "rows_kept_after_filters", "rows_out", "drops_by_reason", "dedup", "timing")}, indent=1))
    print(f"corpus written to {res.out} (report: {res.out / 'report.md'})")
    return 0
