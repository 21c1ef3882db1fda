"""Two trees of runs (before / after a refactor) hold the same results: metrics.json equal but for
timings, predictions.csv byte for byte. Prints one line per run and exits 1 on any difference."""
import json
import sys
from pathlib import Path

TIMING = ("seconds", "_s", "ms", "per_s", "img_s")


def strip(d):
    if isinstance(d, dict):
        return {k: strip(v) for k, v in d.items() if not any(t in k for t in TIMING)}
    if isinstance(d, list):
        return [strip(v) for v in d]
    return d


def main(old: str, new: str, *runs: str) -> int:
    bad = 0
    for r in runs:
        a, b = Path(old) / r, Path(new) / r
        ma, mb = (strip(json.loads((x / "metrics.json").read_text())) for x in (a, b))
        same_metrics = ma == mb
        same_pred = (a / "predictions.csv").read_bytes() == (b / "predictions.csv").read_bytes()
        r1 = ma.get("recall@1_25m")
        print(f"{r}: metrics {'identical' if same_metrics else 'DIFFER'}, predictions.csv "
              f"{'identical' if same_pred else 'DIFFER'} (median error {ma.get('median_error_m')} m"
              + (f", R@1 {r1:.1%}" if isinstance(r1, float) else "") + ")")
        if not same_metrics:
            diff = sorted(k for k in set(ma) | set(mb) if ma.get(k) != mb.get(k))
            print("   differ:", diff[:10])
        bad += not (same_metrics and same_pred)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
