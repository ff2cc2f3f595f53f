"""``python -m hrn.inspect [same overrides as hrn.train]``: what training would see, as one JSON line.

Loads the dataset and applies the protocols exactly as ``hrn.train`` does (checking every image on the way), then
prints the tree's level sizes, each split's size and how many samples carry a label at each level, and how many
training images were relabelled and degraded. Trains nothing.
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from hrn.app import CONF_DIR, apply_ratio_settings, build_data, report_errors
from hrn.data.base import DataSplits


def describe(data: DataSplits) -> dict:
    h = data.hierarchy
    protocol = data.info.get("protocol", {})
    out = {"dataset": data.name, "tree": {"levels": h.level_sizes, "num_nodes": h.num_nodes}}
    for split in ("train", "val", "test"):
        images = getattr(data, split)
        out[split] = {"num_samples": len(images), "labelled_at_level": images.labelled_at_level(h)}
    out["val_is_test"] = data.val is data.test
    out["relabelled"] = protocol.get("relabelled", 0)
    out["degraded"] = protocol.get("degraded", 0)
    out["skipped_images"] = data.info.get("skipped_images", 0)
    out["protocol"] = protocol
    return out


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
@report_errors
def main(cfg: DictConfig) -> None:
    print(json.dumps(describe(build_data(apply_ratio_settings(cfg)))))


if __name__ == "__main__":
    main()
