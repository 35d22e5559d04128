"""The report's "stages" table: how a ``bench run --time-limit`` search spent its time.

Per stage (probe, cached heads, fine-tuning): the share of the budget it was planned and the
seconds it used, its trials and their trial-seconds, the trials its cost model kept from starting,
and the backbones that competed. Reads the ``time_limit`` record of each search's manifest
(written by ``bench.search.staged``).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from bench.report.cells import Table, slug
from bench.report.collect import Collection


def _rows(run: Any) -> list[dict[str, Any]]:
    plan = run.manifest.get("time_limit") or {}
    rows = []
    for s in plan.get("stages", []):
        used = s.get("used_seconds")
        rows.append({
            "run": run.label, "stage": s["stage"], "what": s.get("help", ""),
            "planned share": f"{s.get('share', 0):.0%} ({s.get('planned_seconds', 0):.0f} s)",
            "used": "-" if used is None else f"{used:.0f} s",
            "trials complete/pruned": f"{s.get('complete', 0)}/{s.get('pruned', 0)}",
            "not started (cost)": str(s.get("not_started", 0)),
            "trial-seconds": f"{s.get('trial_seconds', 0):.0f}",
            "backbones": ", ".join(s.get("backbones", [])) or "-",
        })
    return rows


def stages_table(coll: Collection, dataset: str) -> Table | None:
    runs = [r for r in coll.runs_of(dataset) if (r.manifest.get("time_limit") or {}).get("stages")]
    if not runs:
        return None
    rows = [row for r in runs for row in _rows(r)]
    display = pd.DataFrame(rows)
    first = runs[0]
    plan = first.manifest["time_limit"]
    split = first.manifest.get("split") or {}
    promoted = ", ".join(plan.get("promoted", [])) or "-"
    caption = (f"`bench run --time-limit` ({', '.join(f'`{r.label}`' for r in runs)}): "
               f"{plan.get('spent_seconds', 0):.0f} s spent of {plan.get('limit_seconds', 0):.0f} s, "
               f"{plan.get('final_reserve_seconds', 0):.0f} s reserved for the held-out evaluation. Each stage's "
               f"share is of the time left after that reserve; trials are scored by {split.get('protocol_label', 'CV')} "
               f"on {split.get('cv_images', '?')} images (held-out test of {split.get('test_images', '?')} images "
               f"not used). Fine-tuning went to {promoted}: the top half of all backbones and of the pretrained ones, "
               f"by the best of each backbone's probe and cached-heads CV score. \"Not started\": trials the cost model predicted could not finish in "
               f"their stage.")
    return Table(slug("stages", dataset), f"{dataset}: stages of the time-limited search", caption, display,
                 display, terminal=True)
