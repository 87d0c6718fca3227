"""Tasks that measure a build or a host: smoke, bench, quality, recommend."""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path
from typing import Any

from invoke.exceptions import Exit

from ollama_turbo.commands.base import block_table, load_bench, reserve, settings, turbo_task, write_json
from ollama_turbo.commands.flags import number
from ollama_turbo.core import manifest as manifest_mod
from ollama_turbo.core.errors import TurboError, UsageError


@turbo_task(
    url="endpoint to check, e.g. http://127.0.0.1:11434",
    host="a configured host: its listen address, its deployed manifest and its service log",
    api="ollama (default) or llama-server (a bare llama-server)",
    model="model to use (default: the first one the server lists)",
    manifest="a build's manifest.json (or its dist directory): the version and era to expect",
    expect_version="the version /api/version must report",
    cache_type="the K/V cache type to expect, e.g. turbo4 or q8_0/turbo4 (default: turbo.kv)",
    log="the service log to read the cache type from",
    baseline="a previous smoke --json result (e.g. the f16 run) to gate against",
    min_decode_ratio="gate: decode tok/s at least this fraction of the baseline (default 0.9)",
    max_ttft_ratio="gate: time to first token at most this multiple of the baseline (default 1.1)",
    json="write the result as JSON to this file",
)
def smoke(c, url="", host="", api="ollama", model="", manifest="", expect_version="", cache_type="", log="",
          baseline="", min_decode_ratio=0.9, max_ttft_ratio=1.1, json=""):
    """Prove the endpoint runs the intended build with the intended cache type, and measure it."""
    from ollama_turbo.fork import cache_types
    from ollama_turbo.prove import reports
    from ollama_turbo.prove import smoke as smoke_mod
    from ollama_turbo.prove.server_log import file_reader

    s = settings(c)
    if bool(url) == bool(host):
        raise UsageError("give exactly one of --url or --host",
                         hint="--url http://127.0.0.1:11434 for an endpoint, or --host H for a configured host")
    if api not in ("ollama", "llama-server"):
        raise UsageError(f"--api {api!r} is not one of: ollama, llama-server",
                         hint="--api ollama for an Ollama server, --api llama-server for a bare llama-server")
    type_k, type_v = cache_types.parse_pair(cache_type) if cache_type else (s.kv.type_k, s.kv.type_v)
    expect = smoke_mod.Expect(version=expect_version or None, type_k=type_k, type_v=type_v, fork=s.kv.fork,
                              source="--cache-type" if cache_type else "turbo.kv in the settings")
    provenance: dict[str, Any] = {"settings_kv": s.kv_summary()}
    with contextlib.ExitStack() as stack:
        log_reader, build = None, None
        if host:
            from ollama_turbo.deploy.hostview import host_view

            view = stack.enter_context(host_view(s.host(host)))  # the tunnel closes when the smoke is done
            url, log_reader, build = view.url, view.read_log, view.current_manifest()
            provenance["host"] = host
            model = _expect_deployed(view.record(), expect, model, cache_type, s, host)
        r = reports.run_smoke(url, api=api, model=model or None, expect=expect,
                              log=file_reader(Path(log)) if log else log_reader,
                              build=manifest_mod.load(Path(manifest)) if manifest else build, provenance=provenance,
                              baseline=Path(baseline) if baseline else None,
                              thresholds=smoke_mod.Thresholds(
                                  number(float(min_decode_ratio), "min_decode_ratio", example="0.9"),
                                  number(float(max_ttft_ratio), "max_ttft_ratio", example="1.1")))
    print(r.render())
    write_json(json, r.to_json())
    if not r.ok:
        raise Exit(f"error: smoke failed: {', '.join(r.failed)}", code=1)


def _expect_deployed(rec: Any, expect: Any, model: str, cache_type: str, s: Any, host: str) -> str:
    """smoke --host checks what the host was deployed to run (its deploy record), not today's settings; the model
    smoked is the one asked for, else the record's first. Returns the model to smoke ("" for the server's first)."""
    if rec is None:
        print(f"NOTE: {host} has no deploy record (deployed by an older ollama-turbo): expecting today's settings "
              f"(turbo.kv {expect.type_k}/{expect.type_v})")
        return model
    for line in [*rec.problems, *rec.differs_from(s)]:
        print(f"NOTE: {line}")
    model = model or next(iter(rec.models), "")
    if not cache_type:
        pair, whose = rec.kv_for(model or None)
        expect.type_k, expect.type_v, expect.fork = pair.k, pair.v, rec.fork
        expect.source = f"{host}'s deploy record ({whose})"
    return model


@turbo_task(
    url="pre-started servers, one per cache type: f16=http://127.0.0.1:8080,turbo4=http://127.0.0.1:8081",
    host="a configured host: bench redeploys its KV cache type for each type",
    api="ollama (default) or llama-server",
    model="model name (Ollama API)",
    types="cache types or K/V pairs (default f16,q8_0,turbo4,q8_0/turbo4; with --url: the types given there)",
    depths="context depths in tokens (default 0,2048,8192)",
    reps="repetitions per depth (default 3)",
    n_predict="tokens generated per speed run (default 32; through Ollama at most 31, the most it gives for text "
              "that repeats one token)",
    niah_lengths="needle-in-a-haystack lengths in tokens (default 1024,4096)",
    niah_depths="needle positions as fractions (default 0.1,0.5,0.9)",
    ab_predict="tokens generated per A/B prompt (default 128; 0: no A/B set)",
    llama_server="start this llama-server binary here for each type (with --gguf)",
    gguf="the model file: for --llama-server, and for the planner's KV prediction",
    ctx="context size for servers bench starts (default: largest depth + 1024)",
    log="server logs for --url servers: TYPE=FILE,...",
    manifest="the build's manifest.json (or dist directory), recorded as provenance (and its GPU backend for "
             "--llama-server and --llama-bench)",
    out="output directory (default <workspace>/bench/<timestamp>)",
    llama_bench="also run llama-bench here on --gguf at the same depths: 'auto' (the --manifest build's) or a "
                "binary; the report sets the two side by side",
    measure_fallback="measure a config whose attention falls back to the CPU at every depth (default: the first "
                     "depth only; deeper prompts would time the CPU)",
    stock="stock Ollama's build (build-ollama --stock): the types it has run on its own llama-server beside the "
          "custom build's (with --llama-server), labelled 'stock <K/V>'",
)
def bench(c, url="", host="", api="ollama", model="", types="", depths="0,2048,8192",
          reps=3, n_predict=32, niah_lengths="1024,4096", niah_depths="0.1,0.5,0.9", ab_predict=128,
          llama_server="", gguf="", ctx=0, log="", manifest="", out="", llama_bench="", measure_fallback=False,
          stock=""):
    """Measure each cache type: tok/s per depth, latency, KV memory, needle retrieval, A/B outputs."""
    from ollama_turbo.prove import bench as bench_mod
    from ollama_turbo.prove import reports
    from ollama_turbo.prove import targets as targets_mod

    s = settings(c)
    opts = bench_mod.Options.parse(depths=depths, reps=int(reps), n_predict=int(n_predict),
                                   ab_predict=int(ab_predict), niah_lengths=niah_lengths, niah_depths=niah_depths,
                                   gguf=gguf)
    opts.measure_fallback = measure_fallback
    opts.fork = s.kv.fork
    out_dir = Path(out) if out else bench_mod.default_out(s.workspace)
    provenance: dict[str, Any] = {"model": model or gguf, "settings_kv": s.kv_summary()}
    tools = reports.Tools.of(manifest)
    if manifest:
        provenance["build"] = tools.provenance
        opts.blocks = block_table(c, tools.manifest)
    if llama_bench and not gguf:
        raise UsageError("--llama-bench needs --gguf MODEL (the file the server serves)",
                         hint="add --gguf /path/to/model.gguf")
    side_by_side = (tools.tool("llama-bench", "" if llama_bench == "auto" else llama_bench), Path(gguf),
                    targets_mod.pairs_for(types)) if llama_bench else None
    if host:
        from ollama_turbo.deploy import bench_host, hostview

        targets = bench_host.bench_targets(s, s.host(host), targets_mod.pairs_for(types), model)
        deployed = hostview.deployed_manifest(s.host(host))
        if deployed and "build" not in provenance:
            provenance["build"] = deployed.summary()
        provenance.update(host=host, parallel=s.kv.parallel)
    else:
        if llama_server == "auto":
            llama_server = str(tools.tool("llama-server"))
        stock_server = None
        if stock:
            st = reports.Tools.of(stock)
            if st.manifest is None or not st.manifest.stock:
                raise UsageError(f"--stock {stock}: not a stock build",
                                 hint="build one with invoke build-ollama --stock")
            stock_server = targets_mod.StockServer(st.tool("llama-server"), frozenset(st.manifest.cache_types), st.env)
            provenance["stock"] = st.provenance
        targets = targets_mod.choose(url=url, log=log, api=api, model=model, types=types,
                                     llama_server=llama_server, gguf=gguf, ctx=int(ctx), opts=opts,
                                     logs_dir=out_dir / "logs", extra_env={**s.kv.env, **tools.env},
                                     parallel=s.kv.parallel, stock=stock_server)
        if llama_server:
            provenance.update(server=llama_server, host=f"{platform.node()} (here)",
                              parallel=s.kv.parallel)
            provenance.setdefault("build", {"version": targets_mod.server_version(Path(llama_server), tools.env)})
        else:
            provenance["url"] = url
    if tools.manifest is not None:  # the build the labels say: each server's version is checked against it
        for ep, _ in targets:
            ep.build = tools.manifest.version if ep.api == "ollama" else ""
            ep.era = tools.manifest.era
    if url and api == "ollama" and not model:
        raise UsageError("--url with the Ollama API needs --model (the model to measure)",
                         hint="name one the server has (ollama list), e.g. --model smollm2")
    report = reports.run_bench(targets, opts, out_dir, provenance, side_by_side=side_by_side, tools=tools)
    print(bench_mod.summary(report))
    print(out_dir)
    wrong = bench_mod.mismatched(report)
    if wrong:
        raise TurboError(f"bench: the server measured for {', '.join(wrong)} is not what the label says (see the "
                         f"'server mismatch' lines above and {out_dir / 'bench.json'}); those numbers do not count",
                         hint="free the port of any other server, or check the host's service and its log")
    if not bench_mod.measured_anything(report):
        raise TurboError(f"bench measured nothing: every cache type failed (see {out_dir / 'bench.json'})",
                         hint="check the server, host or --llama-server named in the errors above")


@turbo_task(
    model="the model's GGUF file",
    manifest="a build's manifest.json or dist directory: use its tools/llama-perplexity (built from the same fork)",
    llama_perplexity="the llama-perplexity binary (instead of --manifest)",
    types="K/V configs to measure against the f16 cache (default q8_0,turbo4,turbo3,q8_0/turbo4)",
    ctx="contexts, comma-separated (default 512,4096)",
    corpus="text file to evaluate (default: ollama-turbo's own documentation, README and docs/)",
    chunks="at most this many chunks per context (default: all)",
    max_kld="quality gate: mean KL divergence at most (default 0.02; up to twice is BORDERLINE)",
    max_dppl="quality gate: perplexity increase at most (default 0.5)",
    baseline="reuse the f16 baseline of an earlier quality run (its output directory)",
    bench="a bench output directory (or bench.json): adds speed, memory and OOM rows to the verdict table",
    out="output directory (default <workspace>/quality/<model>-<timestamp>)",
    json="also write the report as JSON to this file",
    threads="llama-perplexity's CPU threads (default: every core here; the KL divergence runs on the CPU)",
    gpu_layers="layers on the GPU (default: all where the build has a GPU backend, else 0)",
    stock="stock Ollama's build (build-ollama --stock) beside the custom one: the f16 baseline and the types it has "
          "(f16, q8_0, q4_0, their pairs) run on its own llama-perplexity, labelled 'stock <K/V>'",
)
def quality(c, model, manifest="", llama_perplexity="", types="q8_0,turbo4,turbo3,q8_0/turbo4", ctx="512,4096",
            corpus="", chunks=0, max_kld="", max_dppl="", baseline="", bench="", out="", json="", threads=0,
            gpu_layers=-1, stock=""):
    """What the compressed cache does to the model: KLD, top-1, ΔPPL vs f16; the pass-criteria verdicts."""

    from ollama_turbo.core.sizes import parse_sizes
    from ollama_turbo.fork.cache_types import parse_pairs
    from ollama_turbo.prove import criteria, quality_report, reports
    from ollama_turbo.prove import quality as quality_mod

    s = settings(c)
    if bool(manifest) == bool(llama_perplexity):
        raise UsageError("give --manifest DIST (a build with tools/llama-perplexity) or --llama-perplexity BIN",
                         hint="e.g. --manifest .turbo/dist/<version> (one of them, not both)")
    if int(threads) < 0 or int(gpu_layers) < -1:
        raise UsageError("--threads and --gpu-layers take 0 or more", hint="e.g. --threads 16 --gpu-layers 99")
    tools = reports.Tools.of(manifest)
    binary = tools.tool("llama-perplexity", llama_perplexity)
    opts = quality_mod.Options(pairs=parse_pairs(types), contexts=parse_sizes(ctx, option="--ctx"), chunks=int(chunks),
                               thresholds=quality_mod.Thresholds.parse(max_kld, max_dppl), threads=int(threads),
                               gpu_layers=None if int(gpu_layers) == -1 else int(gpu_layers), fork=s.kv.fork)
    if manifest:
        opts.blocks = block_table(c, tools.manifest)
    if stock:
        opts.stock = reports.stock_side(stock, tools.manifest, opts.pairs)
    reports.check_types(opts.pairs, tools.manifest, opts.stock)
    out_dir = Path(out) if out else reports.quality_out(s.workspace, Path(model))
    report, rows = reports.run_quality(s.workspace, Path(model), binary, tools, opts, out_dir,
                                       corpus=Path(corpus) if corpus else None,
                                       baseline=Path(baseline) if baseline else None,
                                       bench=load_bench(bench) if bench else None,
                                       say=lambda line: print(line, flush=True))
    print(quality_report.markdown(report))
    print("Pass criteria:\n" + criteria.render(rows))
    write_json(json, report)
    print(out_dir)


@turbo_task(
    model="the model's GGUF file",
    host="a host under turbo.hosts (its memory_gib)",
    ctx="the target context in tokens (e.g. 32k)",
    bench="a bench output directory (or bench.json) measured on this model: picks the fastest at that depth",
    manifest="the build's manifest.json or dist directory: its block formats",
    reserve_gib="memory kept for OS, runtime and compute buffers (default 4)",
    json="also write the recommendation as JSON to this file",
)
def recommend(c, model, host, ctx="32k", bench="", manifest="", reserve_gib=4.0, json=""):
    """The K/V config that fits the host at the context, stays on its GPU, passes the gates, decodes fastest."""
    from ollama_turbo.core.sizes import parse_sizes
    from ollama_turbo.prove import recommend as recommend_mod

    sizes = parse_sizes(ctx, option="--ctx")
    if len(sizes) != 1:
        raise UsageError("--ctx takes one context", hint="give one, e.g. --ctx 32k")
    r = recommend_mod.recommend(settings(c), Path(model), host, sizes[0], bench=load_bench(bench) if bench else None,
                                reserve_gib=reserve(reserve_gib), blocks=block_table(c, manifest))
    print(r.render())
    write_json(json, r.to_json())
    if r.choice is None:
        raise TurboError(r.why, hint=r.next_step)
