"""bench/run-edge cannot rot: its smallest run (`--smoke`: one round-trip time, 1 s cells, a
2 s partition, one Kubernetes flow) goes end to end here, on the same network-namespace lab,
delays, clusters (3 etcd members, 3 shim nodes) and client programs as a full run.

Only what the lab and the two systems guarantee is asserted, never a speed: the probe sees the
delay; a write from an etcd follower takes at least one round trip (its quorum is across the
lab); a cut-off etcd member acknowledges nothing before the heal, a cut-off shim node
acknowledges every write; after the heal every member/node holds the same data, and shim's
merged Pods keep both sides' edits.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.netns import NetLab
from tests.support.shim_server import REPO_ROOT

RTT_MS = 20


@pytest.mark.slow  # about 45 s: six servers, a dozen client processes, a partition and a heal
def test_edge_bench_smoke_run(tmp_path: Path) -> None:
    for reason in (NetLab.available(), NetLab.delay_available()):
        if reason is not None:
            pytest.fail(f"the edge bench needs network namespaces with delays: {reason}",
                        pytrace=False)
    out = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, "-m", "bench.edge.main", "--smoke", "--only", "1,4,3",
         "--results-dir", str(out), "--work-dir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    results = json.loads((out / "results.json").read_text())["results"]
    assert "## At the edge (headline)" in (out / "results.md").read_text()

    # 1. The delay is there, and in etcd's write path; both systems answered every write.
    s1 = results["1"]["rtts"][str(RTT_MS)]
    assert s1["probe"]["min_ms"] >= RTT_MS
    assert s1["etcd_leader"] == "h3"
    etcd, shim = s1["cells"]["put_c1.etcd"], s1["cells"]["put_c1.shim-mesh"]
    for cell in (etcd, shim):
        assert "failure" not in cell and cell["count"] > 0 and cell["errors"] == 0, cell
    assert etcd["p50"] >= RTT_MS, etcd

    # 4. The Pod reached Running through three sites' controllers on both systems.
    s4 = results["4"]["rtts"][str(RTT_MS)]
    for label in ("etcd", "shim-mesh"):
        assert len(s4[label]["ms"]) == 1, s4[label]

    # 3. The cut-off host: etcd refuses, shim accepts; both end identical, edits merged.
    for label in ("etcd", "shim-mesh"):
        part = results["3"][label]
        assert "failure" not in part, part
        assert part["identical_after_heal_s"] is not None, part
        assert part["sides"]["h1+h2 (majority)"]["acked"] > 0, part["sides"]
    cut_off = "h3 (cut off)"
    assert results["3"]["etcd"]["sides"][cut_off]["acked_before_heal"] == 0
    shim_cut_off = results["3"]["shim-mesh"]["sides"][cut_off]
    assert shim_cut_off["acked"] == shim_cut_off["writes"] > 0, shim_cut_off
    shim_majority = results["3"]["shim-mesh"]["sides"]["h1+h2 (majority)"]
    assert shim_majority["acked"] == shim_majority["writes"], shim_majority
    merge = results["3"]["shim-mesh"]["merge"]
    assert merge["both_kept"] == merge["both_edited"] and merge["missing_an_edit"] == [], merge
