"""Write a benchmark report: JSON rows, a Markdown summary and PNG plots.

Files (``<dev>`` is ``cpu`` or ``cuda``): ``<dev>.json`` (every row, the machine in each),
``<dev>.md`` (the tables, README-ready), ``<dev>_ops.png`` (op times per provider) and
``<dev>_train.png`` (training-step images/s and peak memory per provider).
"""
from __future__ import annotations

import json
import pathlib
from collections import OrderedDict
from typing import Any, Iterable, Optional, Sequence

MIB = 2 ** 20


def write_json(path: pathlib.Path, rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> None:
    path.write_text(json.dumps({**meta, "rows": list(rows)}, indent=1, default=str) + "\n")


def _ok(rows: Iterable[dict[str, Any]], section: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["section"] == section and r["status"] == "ok"]


def _ordered(values: Iterable[Any]) -> list[Any]:
    return list(OrderedDict.fromkeys(values))


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _speedup(base: Optional[float], value: float) -> str:
    return "" if base is None else f", {base / value:.2g}×"


def _skip_notes(rows: Iterable[dict[str, Any]], section: str) -> list[str]:
    """One line per distinct (provider, status, reason) of the rows that did not run."""
    seen: "OrderedDict[tuple[str, str, str], list[str]]" = OrderedDict()
    everything = _ordered(r.get("op") or r.get("config") for r in rows if r["section"] == section)
    for r in rows:
        if r["section"] == section and r["status"] != "ok":
            what = r.get("op") or r.get("config")
            cases = seen.setdefault((r["provider"], r["status"], r.get("reason", "")), [])
            if what not in cases:
                cases.append(what)
    lines = []
    for (provider, status, reason), cases in seen.items():
        where = "every case" if len(everything) > 1 and cases == everything else ", ".join(map(str, cases))
        lines.append(f"- `{provider}` {status} for {where}: {reason}")
    return lines


def _machine_line(machine: dict[str, Any]) -> str:
    where = machine["device_name"] if machine["device"].startswith("cuda") else f"CPU {machine['cpu']}"
    return (f"{where}; {machine['cpu_count']} CPU cores ({machine['torch_threads']} torch threads); "
            f"torch {machine['torch']}, Triton {machine['triton']}; {machine['platform']}; "
            f"commit {machine['commit']}; load average {_load(machine)}")


def _load(machine: dict[str, Any]) -> str:
    load = machine.get("load_average")
    return "unknown" if not load else "/".join(f"{v:.1f}" for v in load)


def _ops_tables(rows: Sequence[dict[str, Any]], providers: Sequence[str]) -> list[str]:
    ok = _ok(rows, "op")
    lines = ["## Ops", "",
             "Median time per call in ms, then achieved GB/s (inputs read once, outputs written once; "
             "backward adds output gradients, inputs again and input gradients), then speed-up over the "
             "eager reference `torch`. `fwd+bwd` is one forward and one backward.", ""]
    for config in _ordered(r["config"] for r in rows if r["section"] == "op"):
        sub = [r for r in ok if r["config"] == config]
        if not sub:
            continue
        shown = [p for p in providers if any(r["provider"] == p for r in sub)]
        lines += [f"### {config} ({sub[0]['shapes']})", "",
                  "| op | mode | " + " | ".join(f"`{p}`" for p in shown) + " |",
                  "|---|---|" + "---|" * len(shown)]
        for op, mode in _ordered((r["op"], r["mode"]) for r in sub):
            cells = {r["provider"]: r for r in sub if r["op"] == op and r["mode"] == mode}
            base = cells.get("torch", {}).get("median_s")
            row = [f"{_ms(c['median_s'])} ms ({c['gbps']:.2g} GB/s{_speedup(base, c['median_s'])})"
                   if (c := cells.get(p)) else "—" for p in shown]
            lines.append(f"| {op} | {mode} | " + " | ".join(row) + " |")
        lines.append("")
    notes = _skip_notes(rows, "op")
    if notes:
        lines += ["Not run:", "", *notes, ""]
    return lines


def _train_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    ok = _ok(rows, "train")
    lines = ["## Training step", "",
             "Zero grad, forward, backward and Adam step at the config's last epoch (every transform "
             "active, sprites trainable). Peak memory: CUDA allocator peak (tensors) on GPUs, growth of "
             "the peak resident set over the step on the CPU.", "",
             "| config | batch | provider | images/s | ms/step (p20–p80) | peak MiB | vs `torch` |",
             "|---|---|---|---|---|---|---|"]
    configs = _ordered(r["config"] for r in ok)
    for r in sorted(ok, key=lambda r: (configs.index(r["config"]), r["batch"])):
        base = next((b["median_s"] for b in ok if b["provider"] == "torch" and b["config"] == r["config"]
                     and b["batch"] == r["batch"]), None)
        mem_key = "peak_bytes" if r["device"].startswith("cuda") else "growth_bytes"
        memory = f"{r[mem_key] / MIB:.0f}" if mem_key in r else "—"
        ratio = f"{base / r['median_s']:.2f}×" if base else "—"
        lines.append(f"| {r['config']} | {r['batch']} | `{r['provider']}` | {r['images_per_s']:.1f} | "
                     f"{_ms(r['median_s'])} ({_ms(r['p20_s'])}–{_ms(r['p80_s'])}) | {memory} | {ratio} |")
    notes = _skip_notes(rows, "train")
    if notes:
        lines += ["", "Not run:", "", *notes]
    return lines + [""]


def _max_batch_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    ok = _ok(rows, "max_batch")
    if not ok and not any(r["section"] == "max_batch" for r in rows):
        return []
    budget = next((r["budget_bytes"] for r in ok), None)
    lines = ["## Largest batch under a memory budget", ""]
    if budget is not None:
        lines += [f"Budget {budget / 2**30:.3g} GiB. CUDA: doubling then bisection under "
                  "`torch.cuda.set_per_process_memory_fraction`; CPU: a line through the peak resident set at "
                  "two batch sizes, extrapolated (an estimate).", ""]
    lines += ["| config | provider | method | max batch | per image MiB |", "|---|---|---|---|---|"]
    for r in ok:
        per_image = f"{r['per_image_bytes'] / MIB:.1f}" if "per_image_bytes" in r else "—"
        bound = f" (fails at {r['first_failing']})" if r.get("first_failing") else ""
        lines.append(f"| {r['config']} | `{r['provider']}` | {r['method']} | {r['max_batch']}{bound} | {per_image} |")
    notes = _skip_notes(rows, "max_batch")
    if notes:
        lines += ["", "Not run:", "", *notes]
    return lines + [""]


def _memory_estimate_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    if not any(r["section"] == "memory_estimate" for r in rows):
        return []
    ok = _ok(rows, "memory_estimate")
    budget = next((r["budget_bytes"] for r in ok), None)
    traced = ", ".join(_ordered(r["traced_on"] for r in ok))
    lines = ["## Training-step memory: estimate (fake CUDA tensors, not measured)", "",
             "One training step (forward, backward, Adam step with its state allocated) at the config's last "
             "epoch in training mode, traced on fake tensors (`dtifast.bench.memory`): peak of the live tensor "
             "storages in 512-byte blocks (what `torch.cuda.max_memory_allocated` counts), parameters, "
             "gradients, Adam state and input included. Not counted: cuDNN/cuBLAS workspaces, buffers that "
             "the fused kernels' launchers allocate beyond what their fake kernels create, allocator "
             f"fragmentation, the CUDA context. Traced on: {traced or '—'}.", ""]
    if budget is not None:
        lines += [f"Largest batch: the largest whose estimated peak fits {budget / 2**30:.3g} GiB "
                  "(galloping then bisection over traces; the first batch that does not fit in brackets).", ""]
    lines += ["| config | backend | batch | peak MiB | forward / backward / optimizer peak MiB | resident MiB "
              "| largest batch | s |", "|---|---|---|---|---|---|---|---|"]
    for r in ok:
        phases = " / ".join(f"{r['phase_peak_bytes'].get(p, 0) / MIB:.0f}"
                            for p in ("forward", "backward", "optimizer"))
        bound = f" ({r['first_failing']})" if r.get("first_failing") else ""
        seconds = r["estimate_seconds"] + r["search_seconds"]
        lines.append(f"| {r['config']} | `{r['provider']}` | {r['batch']} | {r['peak_bytes'] / MIB:.0f} | {phases} | "
                     f"{sum(r['resident_bytes'].values()) / MIB:.0f} | {r['max_batch']}{bound} | {seconds:.1f} |")
    notes = _skip_notes(rows, "memory_estimate")
    if notes:
        lines += ["", "Not run:", "", *notes]
    return lines + [""]


def write_markdown(path: pathlib.Path, rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> None:
    machine = meta["machine"]
    lines = [f"# dtifast benchmarks: {machine['device']}", "",
             f"Machine: {_machine_line(machine)} at the start, "
             f"{_load({'load_average': meta.get('load_average_end')})} at the end.  ",
             f"Command: `{meta['command']}` ({meta['date']}, {meta['seconds']:.0f} s).  ",
             f"Settings: median of at least {meta['repeats']} timed calls after warm-up, and of more until "
             f"{meta['min_time_s']['ops']:g} s (ops) / {meta['min_time_s']['train']:g} s (training steps) are spent; "
             f"value checks (NaN/inf inputs, index range) {'on' if machine.get('value_checks') else 'off'}; "
             "float32.", ""]
    providers = meta["op_providers"]
    lines += (_ops_tables(rows, providers) + _train_table(rows) + _max_batch_table(rows)
              + _memory_estimate_table(rows))
    path.write_text("\n".join(lines).rstrip() + "\n")


def write_plots(out: pathlib.Path, prefix: str, rows: Sequence[dict[str, Any]], providers: Sequence[str]) -> list[str]:
    """Bar charts of op times and training throughput / memory; returns the files written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    colors = {p: f"C{i}" for i, p in enumerate(_ordered([*providers, *(r["provider"] for r in rows)]))}
    ops_rows = _ok(rows, "op")
    configs = _ordered(r["config"] for r in ops_rows)
    if configs:
        fig, axes = plt.subplots(1, len(configs), figsize=(6 * len(configs), 7), squeeze=False)
        for ax, config in zip(axes[0], configs):
            sub = [r for r in ops_rows if r["config"] == config]
            keys = _ordered((r["op"], r["mode"]) for r in sub)
            shown = [p for p in colors if any(r["provider"] == p for r in sub)]
            height = 0.8 / max(len(shown), 1)
            for j, p in enumerate(shown):
                ys, xs = [], []
                for i, key in enumerate(keys):
                    hit = next((r for r in sub if (r["op"], r["mode"]) == key and r["provider"] == p), None)
                    if hit:
                        ys.append(i + j * height)
                        xs.append(hit["median_s"] * 1e3)
                ax.barh(ys, xs, height=height, color=colors[p], label=p)
            ax.set_yticks([i + 0.4 - height / 2 for i in range(len(keys))])
            ax.set_yticklabels([f"{op} {mode}" for op, mode in keys], fontsize=8)
            ax.invert_yaxis()
            ax.set_xscale("log")
            ax.set_xlabel("ms per call (log)")
            ax.set_title(f"{config}: {sub[0]['shapes']}", fontsize=9)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{prefix}_ops.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    train_rows = _ok(rows, "train")
    if train_rows:
        groups = sorted(_ordered((r["config"], r["batch"]) for r in train_rows),
                        key=lambda g: ([r["config"] for r in train_rows].index(g[0]), g[1]))
        shown = [p for p in colors if any(r["provider"] == p for r in train_rows)]
        mem_key = "peak_bytes" if train_rows[0]["device"].startswith("cuda") else "growth_bytes"
        fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.4 * len(groups) * 2), 4.5))
        width = 0.8 / max(len(shown), 1)
        for ax, key, label in ((axes[0], "images_per_s", "images/s"), (axes[1], mem_key, "peak MiB")):
            for j, p in enumerate(shown):
                xs, ys = [], []
                for i, g in enumerate(groups):
                    hit = next((r for r in train_rows if (r["config"], r["batch"]) == g and r["provider"] == p), None)
                    if hit and key in hit:
                        xs.append(i + j * width)
                        ys.append(hit[key] / (MIB if key != "images_per_s" else 1))
                ax.bar(xs, ys, width=width, color=colors[p], label=p)
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
            ax.set_xticklabels([f"{c}\nB={b}" for c, b in groups], fontsize=8)
            ax.set_yscale("log")
            ax.set_ylabel(label + " (log)")
            ax.legend(fontsize=8)
        axes[0].set_title("training step throughput")
        axes[1].set_title("training step peak memory")
        fig.tight_layout()
        path = out / f"{prefix}_train.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    return written
