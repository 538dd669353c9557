#!/usr/bin/env python3
"""Cuts a cell kernel's System.map down to what one host-samples.json needs.

    trim-map.py CELL/host-samples.json KERNEL/System.map NAME

writes NAME.json (the last sampling round) and NAME.map (for every sampled address the symbol it
lies in and the one after it, plus _etext) next to this script. Then run the golden test with
UPDATE_EXPECT=1 and review NAME.expected.
"""
import bisect, json, os, sys

samples_path, map_path, name = sys.argv[1:4]
rounds = json.load(open(samples_path))
samples = rounds[-1] if isinstance(rounds, list) else rounds
lines = [l.rstrip("\n") for l in open(map_path) if len(l.split()) >= 3]
text = sorted((int(l.split()[0], 16), l) for l in lines if l.split()[1] in "tTwW")
starts = [a for a, _ in text]
keep = {l for l in lines if l.split()[2] in ("_etext", "_einittext")}
for vcpu in samples["vcpus"]:
    for s in vcpu["samples"]:
        # A return address lies just past its call; an interrupt frame holds a pc and a link.
        frames = [[f - 1] if isinstance(f, int) else [f["interrupted"], f.get("link") or 0]
                  for f in s.get("frames", [])]
        for address in [s["pc"], s.get("lr") or 0] + [a for f in frames for a in f]:
            i = bisect.bisect_right(starts, address) - 1
            keep.update(l for _, l in text[max(i, 0):i + 2])
here = os.path.dirname(os.path.abspath(__file__))
json.dump(samples, open(os.path.join(here, name + ".json"), "w"), indent=1)
open(os.path.join(here, name + ".map"), "w").write("".join(l + "\n" for l in sorted(keep)))
