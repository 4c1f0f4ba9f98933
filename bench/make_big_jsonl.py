"""Build the data-check benchmark file: banking77 train repeated until the target size, each repetition's user
text made unique with a suffix (so every repetition is a near-duplicate of the others, as in a scraped,
templated dataset)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def build(source: Path, out: Path, target_bytes: int) -> int:
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    written = 0
    n = 0
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        rep = 0
        while written < target_bytes:
            for row in rows:
                messages = [dict(m) for m in row["messages"]]
                messages[0]["content"] = f"{messages[0]['content']} (ref {rep}-{n % 9973})"
                line = json.dumps({"messages": messages}, ensure_ascii=False) + "\n"
                f.write(line)
                written += len(line.encode("utf-8"))
                n += 1
                if written >= target_bytes:
                    break
            rep += 1
    tmp.replace(out)
    return n


if __name__ == "__main__":
    src, dst, size_mb = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
    print(build(src, dst, int(size_mb * 1e6)), "examples")
