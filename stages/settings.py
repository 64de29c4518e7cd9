"""Check params.yaml whole and write what the stages below are made from (every `dvc repro` runs this first).

`dvc.yaml` marks this stage `always_changed`. Its outputs change only when what they describe changes, so DVC
re-runs a stage that depends on one of them exactly then:
  download.json           data settings, and for data.source local the size and mtime of each source file
                          (a replaced cifar-10.zip is read again, though params.yaml did not change)
  features/<name>.json    the settings features@<name> depends on, resolved for that backbone (a backbone's
                          own lr changes its train stages, not its cached features)
"""

import argparse
from pathlib import Path

from pipeline import atomic, cli, config, download, layout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder for download.json and features/<name>.json")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)

    cfg = config.load_config(args.params)
    config.check_registries(cfg)
    with atomic.atomic_dir(args.out) as tmp:
        atomic.write_json(tmp / "download.json", download.source_identity(cfg.data))
        for name in cfg.backbones:
            atomic.write_json(layout.backbone_file(tmp / "features", name, ".json"),
                              config.stage_settings(cfg, f"features@{name}"))  # fmt: skip


if __name__ == "__main__":
    cli.run(main)
