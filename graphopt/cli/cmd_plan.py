"""``graphopt plan MODEL --devices N``: rank every data x pipeline configuration that fits.

Enumerates ``dp x pp = N`` with every schedule, micro-batch count and memory budget the runtime
can run (:mod:`graphopt.planner.predict`), predicts each step on the device spec with the
step simulator, drops those that do not fit ``--memory-per-device``, prints them fastest first
and writes ``DIR/parallel.json`` (schema ``graphopt.parallel/1``; ``graphopt train --config``
trains its ``chosen`` configuration). ``--measure`` trains the ``--measure-top`` best on this
host and prints measured beside predicted, with the Spearman rank correlation. ``--what-if``
adds the parameter-server vs all-reduce comparison and the scaling curve over N
(:mod:`graphopt.planner.sync_tables`), as tables, in ``parallel.json`` and as pictures. With a
``--device-spec`` the training engine's own costs are measured once per machine and N on a
probe (:mod:`graphopt.planner.engine`) and added to every prediction.
"""
from __future__ import annotations

import json
import math
import sys

from graphopt import units
from graphopt.cli.common import (
    add_device_args,
    add_model_args,
    add_out_arg,
    device_from,
    json_safe,
    output_dir,
    positive_int,
    progress_from,
)
from graphopt.costmodel.presets import LINKS
from graphopt.errors import GraphoptError
from graphopt.parallel import MemoryBudget
from graphopt.schedules import SCHEDULES

ORDER = 28


DEFAULT_SCHEDULES = ("gpipe", "1f1b", "interleaved")   # graphopt.planner.predict's


def register(sub) -> None:
    p = sub.add_parser("plan", help="rank every data/pipeline-parallel configuration of N "
                       "devices that fits (writes parallel.json)",
                       description="Enumerate every dp x pp = N configuration (schedule, "
                       "micro-batches, memory budget), predict its step time on the device spec "
                       "and its memory per device, rank those that fit and write "
                       "DIR/parallel.json; --measure trains the best on this host.")
    add_model_args(p)
    g = p.add_argument_group("planning")
    g.add_argument("--devices", type=positive_int, required=True, metavar="N",
                   help="devices (processes) to plan for")
    g.add_argument("--memory-per-device", default=None, metavar="BYTES",
                   help="memory each device has for weights, gradients, optimizer state and "
                   "activations, e.g. 2GiB (default: the device's; processes of one CPU host "
                   "share its memory)")
    g.add_argument("--schedules", default=",".join(DEFAULT_SCHEDULES),
                   help="pipeline schedules to consider, comma-separated among gpipe, 1f1b, "
                   f"interleaved, zero-bubble (default {','.join(DEFAULT_SCHEDULES)})")
    g.add_argument("--max-microbatches", type=positive_int, default=16, metavar="M",
                   help="most micro-batches per step to consider (default 16)")
    g.add_argument("--memory-budgets", default="none,0.5", metavar="LIST",
                   help="memory budgets to consider: none (save every activation) and fractions "
                   "in (0, 1) of the saved activations, written with a decimal point "
                   "(default none,0.5)")
    g.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd",
                   help="optimizer whose state is counted (default sgd, as graphopt train)")
    g.add_argument("--imbalance", type=float, default=0.03,
                   help="allowed stage imbalance for the partitioner (default 0.03)")
    g.add_argument("--link", choices=sorted(LINKS), default=None,
                   help="p2p link when the device spec has none measured (default: by device)")
    g.add_argument("--engine-overhead", choices=["auto", "measure", "off"], default=None,
                   help="the training engine's own costs per action, step and p2p message, "
                   "measured by training a tiny probe on N processes (about 30 s, cached per "
                   "machine): auto uses the cache or measures, measure measures again, off "
                   "leaves them out (default: auto with --device-spec, else off)")
    g.add_argument("--no-step-timing", dest="step_timing", action="store_false",
                   help="price stages from the device spec alone; by default, with a calibrated "
                   "CPU spec, the model's training step is also timed alone once per micro-batch "
                   "size (cached per machine) and scales the spec's stage times")
    g.add_argument("--top", type=positive_int, default=12,
                   help="rows of the table (default 12; parallel.json has them all)")
    m = p.add_argument_group("measuring")
    m.add_argument("--measure", action="store_true", help="train the best configurations on "
                   "this host and print measured beside predicted")
    m.add_argument("--measure-top", type=positive_int, default=3, metavar="K",
                   help="configurations to measure, best predicted first, among those without "
                   "a memory budget (the runtime does not rematerialize; default 3)")
    m.add_argument("--steps", type=positive_int, default=4,
                   help="training steps per measured configuration (default 4; the median "
                   "after the first is reported)")
    m.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                   help="limit for each measured configuration (default 600)")
    m.add_argument("--what-if", action="store_true", help="also: parameter server vs ring "
                   "all-reduce as N, the link and the model size vary, and the scaling curve "
                   "over N with the fit C(N) = C(1) + k(N - 1)")
    add_device_args(p, default="cpu", prices="every stage, transfer and all-reduce")
    add_out_arg(p, "parallel.json (and with --what-if the pictures)")
    p.set_defaults(func=run)


def _list(text: str, what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise GraphoptError(f"--{what} is empty")
    return items


def parse_budgets(text: str) -> tuple:
    """``none,0.5`` -> ``(None, MemoryBudget(fraction=0.5))``: each read by
    :meth:`~graphopt.parallel.MemoryBudget.parse`; the planner takes fractions below 1 (the
    remat saving is a ratio applied to every stage; 1 saves what none saves)."""
    out = []
    for item in _list(text, "memory-budgets"):
        budget = MemoryBudget.optional(item, option="--memory-budgets")
        if budget is not None and not (budget.is_fraction and budget.fraction < 1.0):
            raise GraphoptError(f"--memory-budgets {item}: the planner takes fractions in (0, 1) "
                                "of the saved activations, e.g. 0.5 (none saves them all)")
        out.append(budget)
    return tuple(dict.fromkeys(out))


def _options(args) -> dict:
    schedules = _list(args.schedules, "schedules")
    bad = [s for s in schedules if s not in SCHEDULES]
    if bad:
        raise GraphoptError(f"--schedules: unknown {bad[0]!r}; choose from "
                            f"{', '.join(SCHEDULES)}")
    for name in ("imbalance", "timeout"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            raise GraphoptError(f"--{name} must be a positive number, got {value:g}")
    cap = None
    if args.memory_per_device is not None:
        cap = units.parse_bytes(args.memory_per_device, option="--memory-per-device")
        if cap <= 0:
            raise GraphoptError("--memory-per-device must be more than 0 bytes")
    if args.measure and args.steps < 2:
        raise GraphoptError("--measure needs --steps 2 or more (the first step warms up)")
    return {"schedules": tuple(dict.fromkeys(schedules)), "budgets": parse_budgets(
        args.memory_budgets), "max_microbatches": args.max_microbatches, "cap": cap}


def run(args) -> int:
    from graphopt.export import write_atomic
    from graphopt.planner.measure import MeasureError
    from graphopt.planner.session import plan_session
    from graphopt.specs import load_spec, parse_overrides
    opts = _options(args)
    cost_model = device_from(args)
    progress = progress_from(args)
    with output_dir(args.out) as out:
        with progress.step(f"loading {args.model}"):
            loaded = load_spec(args.model, overrides=parse_overrides(args.overrides),
                               batch=args.batch, seq=args.seq, image_size=args.image_size,
                               seed=args.seed)
        try:
            session = plan_session(
                loaded, cost_model, args.devices, model=args.model,
                memory_per_device=opts["cap"], schedules=opts["schedules"],
                budgets=opts["budgets"], max_microbatches=opts["max_microbatches"],
                optimizer=args.optimizer, seed=args.seed, imbalance=args.imbalance,
                capture_mode=args.capture, step_timing=args.step_timing,
                engine=args.engine_overhead or ("auto" if args.device_spec else "off"),
                measure_top=args.measure_top if args.measure else 0, steps=args.steps,
                timeout_s=args.timeout, what_if_dir=out if args.what_if else None,
                progress=progress)
        except MeasureError as exc:      # the runtime failed, not the input: exit 1
            print(f"graphopt: error: {exc}", file=sys.stderr)
            return 1
        doc = session.document
        path = write_atomic(out / "parallel.json", json.dumps(json_safe(doc), indent=1) + "\n")
    print_report(session.result, doc, args.top)
    if args.what_if:
        print_what_if(doc["what_if"])
    for p in [path, *session.written]:
        print(f"wrote {p}")
    return 0


def _size(n) -> str:
    """Bytes for people, in powers of 2 (exact values are in parallel.json)."""
    n = float(n)
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{int(n)} B"


def _ms(x) -> str:
    return "-" if x is None else f"{x * 1e3:,.2f}"


def print_report(result, doc: dict, top: int, file=None) -> None:
    """The ranked table (measured beside predicted when measured), the choice and the notes."""
    from rich.console import Console
    from rich.table import Table
    stream = file or sys.stdout
    console = Console(file=stream, soft_wrap=True, width=None if stream.isatty() else 140)
    measured = any(c.measured_step_seconds for c in result.ranked)
    t = Table(title=f"graphopt plan {doc['model']}: {result.devices} devices, batch "
              f"{result.batch}, {_size(result.memory_per_device)} per device; priced for "
              f"{doc['device'].get('priced_for', doc['device'].get('name'))}")
    cols = ["#", "dp", "pp", "schedule", "M", "budget", "micro", "predicted ms", "bubble",
            "all-reduce ms", "memory/device"]
    if measured:
        cols += ["measured ms", "error"]
    for col in cols:
        t.add_column(col, justify="left" if col == "schedule" else "right")
    for i, c in enumerate(result.ranked[:top]):
        cfg, d = c.config, c.detail
        row = [str(i), str(cfg.dp), str(cfg.pp), cfg.schedule, str(cfg.microbatches),
               "-" if cfg.memory_budget is None else str(cfg.memory_budget),
               str(cfg.microbatch_size), _ms(c.predicted_step_seconds), f"{d['bubble']:.0%}",
               _ms(d["allreduce_seconds"]), _size(c.memory_per_device_bytes)]
        if measured:
            m = c.measured_step_seconds
            row += [_ms(m), "-" if not m else f"{c.predicted_step_seconds / m - 1:+.0%}"]
        t.add_row(*row)
    console.print(t)
    ch = result.chosen
    console.print(f"chosen: {ch.config.label()}: {_ms(ch.predicted_step_seconds)} ms per step "
                  f"predicted, {ch.detail['samples_per_second']:,.1f} samples/s; "
                  f"{len(result.ranked)} configurations fit, {len(result.rejected)} do not "
                  f"(least memory among those: "
                  f"{_least(result.rejected)}), {len(result.skipped)} could not be priced")
    agree = doc.get("measured")
    if agree and agree["n"]:
        rho = "n/a (fewer than 3 measured)" if agree["spearman"] is None else \
            f"{agree['spearman']:.2f}"
        console.print(f"measured {agree['n']}: Spearman rank correlation {rho}; median |error| "
                      f"{agree['median_abs_error']:.0%}, max {agree['max_abs_error']:.0%}; the "
                      f"predicted best ran {agree['chosen_vs_best']:+.0%} against the fastest "
                      "measured")
    for note in result.notes + [f"not priced: {s}" for s in result.skipped[:5]]:
        console.print(f"note: {note}", style="dim")


def print_what_if(view: dict, file=None) -> None:
    """Sync times at the model's size per link and n, the crossovers, the scaling fits."""
    from rich.console import Console
    from rich.table import Table
    stream = file or sys.stdout
    console = Console(file=stream, soft_wrap=True, width=None if stream.isatty() else 140)
    t = Table(title=f"gradient sync per step, {view['grad_bytes']:,} gradient bytes: ring "
              "all-reduce vs parameter server")
    for col in ("link", "n", "ring ms", "1 server ms", "n shards ms", "server/ring",
                "ring bytes/worker", "server bytes/worker", "bytes at the server"):
        t.add_column(col, justify="left" if col == "link" else "right")
    for r in view["sync"]:
        if r["scale"] != 1.0:
            continue
        t.add_row(r["link"], str(r["n"]), _ms(r["ring_s"]), _ms(r["ps_s"]), _ms(r["ps_sharded_s"]),
                  f"{r['ps_over_ring']:.2f}", _size(int(r["ring_worker_bytes"])),
                  _size(int(r["ps_worker_bytes"])),
                  _size(int(r["ps_server_bytes"])))
    console.print(t)
    for c in view["sync_summary"]:
        if c["model_bytes"] != view["grad_bytes"]:
            continue
        always = "faster at every n" if c["ring_always_faster"] else "not always faster"
        console.print(f"{c['link']}: one server takes {c['ps_over_ring_at_n_min']:.2f}x the "
                      f"ring's time at n = {c['n_min']}, {c['ps_over_ring_at_n_max']:.2f}x at "
                      f"n = {c['n_max']} (ring {always}; sizes 0.01x-10x in parallel.json)")
    sc = view["scaling"]
    for label, pts in sc["curves"].items():
        fit = sc["fits"].get(label)
        text = ", ".join(f"N={int(n)}: {c:,.1f}/s" for n, c in pts)
        tail = "" if not fit else (f"; fit C(N) = {fit['c1']:,.1f} + {fit['k']:,.2f}(N - 1), "
                                   f"k/C(1) = {fit['efficiency']:.2f}, max error "
                                   f"{fit['rel_err_max']:.0%}")
        console.print(f"scaling, {label}: {text}{tail}")
    for note in view["notes"]:
        console.print(f"note: {note}", style="dim")


def _least(rejected) -> str:
    return _size(min(c.memory_per_device_bytes for c in rejected)) if rejected \
        else "-"


