"""The benchmark figures as plain-text tables (what ``python -m hrn.bench`` prints beside the JSON)."""

from __future__ import annotations

__all__ = ["data_table", "e2e_table", "small_table", "table"]


def table(result: dict) -> str:
    out = [f"machine: {result['machine']}"]
    if "tree_loss" in result:
        out += [
            "",
            "tree loss, forward + backward, batch 64 (milliseconds; speed-up of auto: median of per-round ratios)",
        ]
        out += _tree_loss_rows(result["tree_loss"])
    if "train_step" in result:
        t = result["train_step"]
        out += [
            "",
            f"train step at {t['input']} px, batch {t['batch']}, {t['pairs']} paired runs: HRN {t['hrn_s']:.3f} s "
            f"({t['hrn_images_per_s']:.1f} img/s), ResNet-50 {t['resnet50_s']:.3f} s "
            f"({t['resnet50_images_per_s']:.1f} img/s), median ratio {t['ratio_median']:.2f}",
        ]
    for t in result.get("train_step_timm", []):
        out.append(
            f"train step, {t['trunk']} at {t['input']} px, batch {t['batch']}: HRN {t['hrn_s']:.3f} s "
            f"({t['hrn_images_per_s']:.1f} img/s), the trunk as a classifier {t['trunk_s']:.3f} s "
            f"({t['trunk_images_per_s']:.1f} img/s), median ratio {t['ratio_median']:.2f}"
        )
    if "stems" in result:
        t = result["stems"]
        out += [
            "",
            f"Fashion-MNIST recipe's train step (ResNet-18, 32 px, batch {t['batch']}), by stem: images/s",
        ]
        for stem, rate in t["images_per_s"].items():
            side = t["map_side"][stem]
            out.append(
                f"  {stem:<18}{rate:9.1f}   map {side}x{side}   x{t['slowdown'][stem]:.2f} the standard stem's time"
            )
    return "\n".join(out)


def _tree_loss_rows(rows: list[dict]) -> list[str]:
    out = [
        f"{'tree':<6}{'nodes':>8}{'subtree':>9}{'dense':>9}{'auto':>9}{'authors':>9}  {'auto =':<9}"
        f"{'x subtree':>22}{'x dense':>22}{'x authors':>22}"
    ]
    for r in rows:

        def ms(kernel, r=r):
            return f"{r[kernel + '_s'] * 1e3:9.3f}" if f"{kernel}_s" in r else f"{'-':>9}"

        def speedup(other, r=r):
            if f"auto_vs_{other}" not in r:
                return f"{'-':>22}"
            low, high = r[f"auto_vs_{other}_range"]
            return f"{r[f'auto_vs_{other}']:.2f} ({low:.2f}-{high:.2f})".rjust(22)

        out.append(
            f"{r['tree']:<6}{r['num_nodes']:>8}{ms('subtree')}{ms('dense')}{ms('auto')}{ms('authors')}  "
            f"{r['auto_picks']:<9}{speedup('subtree')}{speedup('dense')}{speedup('authors')}"
        )
    return out


def data_table(d: dict) -> str:
    out = [f"training loader, {d['images']} {d['source']} ({d['sizes']}): images/s"]
    for r in d["loaders"]:
        build = f"  (cache built in {r['build_s']:.1f} s)" if "build_s" in r else ""
        out.append(f"  {r['path']:<9} {r['crop']} px {r['workers']} workers {r['images_per_s']:10.1f}{build}")

    def at(key: str) -> str:  # "448/2" -> "2 workers at 448 px"
        crop, workers = key.split("/")
        return f"{workers} workers at {crop} px"

    out.append("  cache / pil: " + ", ".join(f"{x:.1f}x {at(k)}" for k, x in d["cache_speedup"].items()))
    if d.get("shards_vs_cache"):
        written = ", ".join(f"{s:.1f} s at {c} px" for c, s in d["shard_write_s"].items())
        out.append(
            "  shards / cache: "
            + ", ".join(f"{x:.2f}x {at(k)}" for k, x in d["shards_vs_cache"].items())
            + f" (shards written in {written})"
        )
        out.append(
            "  streamed / cache: " + ", ".join(f"{x:.2f}x {at(k)}" for k, x in d["streamed_vs_cache"].items())
        )
    if "scale" in d:
        out.append(scale_table(d["scale"]))
    return "\n".join(out)


def scale_table(d: dict) -> str:
    t, step = d["tree"], d["train_step"]
    out = [f"shards at scale: a {len(t['levels'])}-level tree of {t['nodes']:,} nodes, {d['image']}"]
    for r in d["memory"]:
        out.append(
            f"  {r['images']:>7,} images {r['read']:<8}: written in {r['write_s']:.1f} s, epoch "
            f"{r['images_per_s']:8.0f} img/s, peak +{r['peak_growth_mb']:.0f} MB over {r['rss_after_imports_mb']:.0f} "
            f"MB after imports; at the end heap +{r['anon_growth_mb']:.0f} MB, mapped chunks +{r['file_growth_mb']:.0f} MB"
        )
    out.append(
        "  heap per 100,000 more images: "
        + ", ".join(f"{k} {v:.0f} MB" for k, v in d["anon_mb_per_100k_images"].items())
    )
    out.append(
        f"  train step, {step['trunk']} at {step['input']} px, batch {step['batch']}: "
        + ", ".join(f"{k} tree {v:.1f} img/s" for k, v in step["images_per_s"].items())
        + f" ({step['wide_vs_cub']:.2f}x the CUB tree's time)"
    )
    return "\n".join(out)


def small_table(d: dict) -> str:
    if "skipped" in d:
        return f"small images: skipped ({d['skipped']})"
    out = [f"small images, {d['images']} Fashion-MNIST training images ({d['sizes']}): images/s"]
    out += [f"  {r['format']:<36}{r['images_per_s']:10.1f}" for r in d["loaders"]]
    out.append(
        f"  in memory / PNG decoded every epoch: {d['memory_vs_png']:.1f}x; "
        f"/ release 0.1's folder pipeline: {d['memory_vs_release_0_1']:.1f}x"
    )
    return "\n".join(out)


def e2e_table(e: dict) -> str:
    s, a = e["setting"], e["step_alone"]
    return "\n".join(
        [
            f"hrn.train end to end: {s['train']} train / {s['test']} test images, {s['trunk']}, "
            f"{s['resize']} -> {s['crop']} px, batch {s['batch']}, {s['workers']} workers, {s['precision']}, "
            f"channels_last={s['channels_last']}, compile={s['compile']}",
            f"  step alone: train {a['train_images_per_s']:.1f} img/s, eval {a['eval_images_per_s']:.1f} img/s "
            f"-> an epoch could take {a['allowed_epoch_s']:.1f} s",
            "  epochs (train + validation): " + ", ".join(f"{x:.1f} s" for x in e["epoch_s"]),
            f"  e2e / step alone: {e['ratio']:.2f}  (cache built in {e['cache_build_s']:.1f} s, once)",
        ]
    )
