"""`ragvid serve` — serve the deployments of infra/prefect.yaml from this machine."""

from __future__ import annotations

from typing import Annotated

import typer

from ragvid.flows.cli.common import DEFAULT_WORKSPACE, app, console, user_errors
from ragvid.schemas import EmbedConfig
from ragvid.schemas.config import defaults

_EMBED = defaults(EmbedConfig)


@app.command()
@user_errors
def serve(
    file: Annotated[
        str | None, typer.Option("--file", "-f", help="prefect.yaml (default: infra/prefect.yaml)")
    ] = None,
    workspace: Annotated[
        str | None,
        typer.Option("--workspace", "-w", help="Override every deployment's workspace parameter."),
    ] = None,
    only: Annotated[
        list[str] | None, typer.Option("--only", help="Serve only these deployments (repeat).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Max concurrent flow runs.")] = None,
    list_: Annotated[
        bool, typer.Option("--list", help="List the deployments and their schedules, then exit.")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Load and check every deployment without serving."),
    ] = False,
) -> None:
    """Serve ragvid's deployments (cron schedules + on-demand runs) until Ctrl-C.

    Runs show up in the Prefect UI of the server PREFECT_API_URL points at; start one with
    `prefect server start` (or infra/start-prefect-server.sh) first.
    """
    from ragvid.flows.deployments import check_spec, load_specs, runner_deployments
    from ragvid.flows.deployments import serve as do_serve

    specs = load_specs(file)
    if only:
        names = {s.name for s in specs}
        unknown = sorted(set(only) - names)
        if unknown:
            raise ValueError(f"unknown deployment(s) {unknown}. Available: {sorted(names)}")
        specs = [s for s in specs if s.name in only]
    if list_ or dry_run:
        for spec in specs:
            flow = check_spec(spec)
            when = ", ".join(f"cron '{c}' {tz}" for c, tz in spec.crons) or "on demand"
            console.print(
                f"[bold]{flow.name}/{spec.name}[/]  {spec.entrypoint}  ({when})  "
                f"pool={spec.work_pool or '-'}  tags={','.join(spec.tags)}",
                soft_wrap=True,
            )
        if dry_run:
            runner_deployments(specs, workspace)
            console.print(f"[green]ok:[/] {len(specs)} deployments load (dry run, not served)")
        return
    console.print(f"serving {len(specs)} deployments — Ctrl-C to stop")
    do_serve(specs, workspace=workspace, limit=limit)


run_app = typer.Typer(
    help="Run one ragvid Prefect flow now (in this process; visible in the Prefect UI).",
    no_args_is_help=True,
)
app.add_typer(run_app, name="run")

WsOpt = Annotated[
    str,
    typer.Option("--workspace", "-w", envvar="RAGVID_WORKSPACE", help="Workspace root."),
]
RayOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address", help="Ray cluster (ray://HOST:10001, HOST:6379 or auto); default local."
    ),
]


@run_app.command("status")
@user_errors
def run_status(workspace: WsOpt = DEFAULT_WORKSPACE) -> None:
    """Count what a workspace holds (the `workspace-status` flow)."""
    from ragvid.flows.preflight import check_workspace
    from ragvid.flows.status_flow import workspace_status_flow

    check_workspace(workspace)
    out = _run(workspace_status_flow, workspace=workspace)
    console.print(f"report: {out['report']}")


def _run(flow_fn, ray_address: str | None = None, **params):
    """Preflight (Prefect server, Ray address) then run the flow with ragvid's settings."""
    from ragvid.flows.preflight import (
        check_prefect_api,
        check_ray_address,
        flow_settings,
        quiet_user_errors,
    )

    check_prefect_api()
    check_ray_address(ray_address)
    if ray_address is not None:
        params["ray_address"] = ray_address
    with flow_settings(), quiet_user_errors():
        return flow_fn(**params)


@run_app.command("build-index")
@user_errors
def run_build_index(
    corpus: Annotated[str, typer.Option("--corpus", "-c", help="Corpus name in the workspace.")],
    workspace: WsOpt = DEFAULT_WORKSPACE,
    input: Annotated[
        str | None, typer.Option("--input", "-i", help="Ingest this corpus source first.")
    ] = None,
    index: Annotated[str | None, typer.Option(help="Index name (default: the corpus).")] = None,
    encoder: Annotated[
        str,
        typer.Option(
            help="Preset, fitted encoder name, or open_clip spec (`ragvid encoder list`)."
        ),
    ] = _EMBED["encoder"],
    part_size: Annotated[int, typer.Option(help="Manifest rows per embed part.")] = _EMBED[
        "part_size"
    ],
    num_shards: Annotated[int, typer.Option(help="FAISS shards.")] = 1,
    canonical_only: Annotated[
        bool, typer.Option(help="Index canonical members of duplicate groups only.")
    ] = False,
    engine: Annotated[
        str, typer.Option(help="ray (Ray Data, as `ragvid embed`) | ray-tasks | local.")
    ] = "ray",
    retry_failures: Annotated[
        bool, typer.Option("--retry-failures", help="Reprocess only the quarantined rows.")
    ] = False,
    ray_address: RayOpt = None,
) -> None:
    """Ingest → embed (the Ray Data pipeline) → dedup → index → inspection → report."""
    from ragvid.flows.build_index import build_index_flow
    from ragvid.flows.preflight import check_manifest, check_ray_address, check_workspace
    from ragvid.pipelines.embed.run import ENGINES
    from ragvid.pipelines.embed.spec import parse_encoder

    if engine not in ENGINES:
        raise ValueError(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")
    check_ray_address(ray_address)
    ws = check_workspace(workspace, must_exist=input is None)
    if input is None:
        check_manifest(ws, corpus)
    parse_encoder(encoder, ws)  # a wrong name fails here, before Prefect starts
    out = _run(
        build_index_flow,
        ray_address,
        workspace=workspace,
        corpus=corpus,
        input=input,
        index=index,
        encoder=encoder,
        part_size=part_size,
        num_shards=num_shards,
        canonical_only=canonical_only,
        engine=engine,
        retry_failures=retry_failures,
    )
    e = out["embed"]
    console.print(
        f"index {out['index_dir']}: {out['index']['ntotal']} vectors; embed parts "
        f"{e['parts']} ({e['parts_skipped']} reused), {e['embedded']} embedded, "
        f"{e['quarantined']} quarantined\nreport: {out['report']}"
    )


@run_app.command("neighbours")
@user_errors
def run_neighbours(
    index: Annotated[str, typer.Option("--index", help="Index name in the workspace.")],
    workspace: WsOpt = DEFAULT_WORKSPACE,
    k: Annotated[int, typer.Option("-k", help="Neighbours per video.")] = 5,
    name: Annotated[str | None, typer.Option(help="Output name (default: the index).")] = None,
    ray_address: RayOpt = None,
) -> None:
    """Materialise training neighbour lists from an index."""
    from ragvid.flows.neighbours_flow import neighbours_flow
    from ragvid.flows.preflight import check_workspace
    from ragvid.flows.resolve import Resolver

    Resolver(check_workspace(workspace)).index(index)  # lists the indexes there are
    out = _run(neighbours_flow, ray_address, workspace=workspace, index=index, k=k, name=name)
    console.print(f"neighbours {out['out_dir']}: {out['videos']} videos\nreport: {out['report']}")


@run_app.command("finetune")
@user_errors
def run_finetune(
    corpus: Annotated[str, typer.Option("--corpus", "-c", help="Corpus of the training videos.")],
    index: Annotated[str, typer.Option("--index", help="Index the neighbours came from.")],
    run: Annotated[str, typer.Option("--run", help="Run name (under <workspace>/runs/).")],
    workspace: WsOpt = DEFAULT_WORKSPACE,
    base: Annotated[
        str | None, typer.Option(help="Diffusers base folder (default: the tiny preset).")
    ] = None,
    preset: Annotated[str, typer.Option(help="Training recipe: tiny | paper.")] = "tiny",
    model_preset: Annotated[str, typer.Option(help="Adapter sizes: tiny | zeroscope.")] = "tiny",
    max_steps: Annotated[int | None, typer.Option(help="Override the recipe's steps.")] = None,
) -> None:
    """Fine-tune the RAGME adapter on the index's neighbour lists (the `finetune` flow)."""
    from ragvid.flows.finetune_flow import finetune_flow
    from ragvid.flows.preflight import check_workspace

    check_workspace(workspace)
    out = _run(
        finetune_flow,
        workspace=workspace,
        corpus=corpus,
        index=index,
        run=run,
        base=base,
        preset=preset,
        model_preset=model_preset,
        max_steps=max_steps,
    )
    console.print(f"run {out['run_dir']}: step {out['step']}\nreport: {out['report']}")


@run_app.command("generate")
@user_errors
def run_generate(
    workspace: WsOpt = DEFAULT_WORKSPACE,
    prompts: Annotated[str | None, typer.Option(help="Prompt file (.txt/.csv/.parquet).")] = None,
    index: Annotated[str | None, typer.Option(help="Retrieval index name.")] = None,
    run: Annotated[str | None, typer.Option(help="Trained adapter run.")] = None,
    job: Annotated[str | None, typer.Option(help="Job name (default: today's date).")] = None,
    base: Annotated[str | None, typer.Option(help="Diffusers base folder.")] = None,
    method: Annotated[
        str, typer.Option(help="ragme | ragca | raginit | base | freeinit")
    ] = "ragme",
    tiny: Annotated[bool, typer.Option(help="Tiny CPU generation settings.")] = True,
) -> None:
    """Batch generation (the `batch-generate` flow that the nightly schedule runs)."""
    from ragvid.flows.generate_flow import batch_generate_flow
    from ragvid.flows.preflight import check_workspace

    check_workspace(workspace)
    out = _run(
        batch_generate_flow,
        workspace=workspace,
        prompts=prompts,
        index=index,
        run=run,
        job=job,
        base=base,
        method=method,
        tiny=tiny,
    )
    console.print(
        f"{out['generated']} generated, {out['skipped']} reused, {out['failed']} failed → "
        f"{out['table']}\nreport: {out['report']}"
    )


@run_app.command("k-ablation")
@user_errors
def run_k_ablation(
    corpus: Annotated[str, typer.Option("--corpus", "-c", help="Corpus (its val split scores).")],
    index: Annotated[str, typer.Option("--index", help="Retrieval index name (train).")],
    workspace: WsOpt = DEFAULT_WORKSPACE,
    name: Annotated[str, typer.Option(help="Study name (runs <name>-k<K>).")] = "k-ablation",
    k: Annotated[list[int] | None, typer.Option("--k", help="A K to train; repeatable.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Training steps per adapter.")] = None,
    preset: Annotated[str, typer.Option(help="Training recipe: paper | tiny.")] = "tiny",
    num_prompts: Annotated[int, typer.Option(help="Val captions to score.")] = 4,
    base: Annotated[str | None, typer.Option(help="Diffusers base folder.")] = None,
) -> None:
    """RAGME Fig. 4: train one adapter per K, evaluate each at its K, plot FVD vs copy
    similarity — the `k-ablation` flow."""
    from ragvid.flows.k_ablation_flow import k_ablation_flow
    from ragvid.flows.preflight import check_workspace

    check_workspace(workspace)
    out = _run(
        k_ablation_flow,
        workspace=workspace,
        corpus=corpus,
        index=index,
        name=name,
        ks=k or None,
        max_steps=max_steps,
        preset=preset,
        num_prompts=num_prompts,
        base=base,
    )
    for r in out["rows"]:
        vals = "  ".join(
            f"{c}={'n/a' if r[c] is None else format(r[c], '.4g')}"
            for c in r
            if c not in ("method", "label", "run", "k")
        )
        console.print(f"K={r['k']:>3}: {vals}")
    console.print(f"plot {out['plot']}\nreport: {out['report']}")


@run_app.command("evaluate")
@user_errors
def run_evaluate(
    corpus: Annotated[str, typer.Option("--corpus", "-c", help="Corpus of the reference videos.")],
    index: Annotated[str, typer.Option("--index", help="Retrieval index name.")],
    workspace: WsOpt = DEFAULT_WORKSPACE,
    run: Annotated[str | None, typer.Option(help="Trained adapter run.")] = None,
    name: Annotated[str, typer.Option(help="Evaluation name (under <workspace>/evals/).")] = "eval",
    prompts: Annotated[str | None, typer.Option(help="Prompt file.")] = None,
    base: Annotated[str | None, typer.Option(help="Diffusers base folder.")] = None,
    tiny: Annotated[bool, typer.Option(help="Tiny CPU generation settings.")] = True,
) -> None:
    """Compare methods (FVD/KVD, copy detection, latency) — the `evaluate` flow."""
    from ragvid.flows.evaluate_flow import evaluate_flow
    from ragvid.flows.preflight import check_workspace

    check_workspace(workspace)
    out = _run(
        evaluate_flow,
        workspace=workspace,
        corpus=corpus,
        index=index,
        run=run,
        name=name,
        prompts=prompts,
        base=base,
        tiny=tiny,
    )
    console.print(f"evaluation {out['out_dir']} (html {out['html']})\nreport: {out['report']}")


@run_app.command("vimi-dataset")
@user_errors
def run_vimi_dataset(
    corpus: Annotated[str, typer.Option("--corpus", "-c", help="Video corpus to augment.")],
    memory: Annotated[str, typer.Option("--memory", "-m", help="Image-text memory name.")],
    workspace: WsOpt = DEFAULT_WORKSPACE,
    name: Annotated[str | None, typer.Option(help="Dataset name (default: corpus-memory).")] = None,
    source: Annotated[
        list[str] | None,
        typer.Option("--source", help="Ingest these memory sources first (repeat)."),
    ] = None,
    keyframes: Annotated[
        bool, typer.Option("--keyframes", help="Add the corpus's keyframes to the memory first.")
    ] = False,
    k: Annotated[int, typer.Option("-k", help="Pairs per caption.")] = 3,
    ray_address: RayOpt = None,
) -> None:
    """Build a VIMI multimodal prompt dataset and its 3 task tables (the `vimi-dataset` flow)."""
    from ragvid.flows.preflight import check_workspace
    from ragvid.flows.vimi_flow import vimi_dataset_flow

    check_workspace(workspace)
    out = _run(
        vimi_dataset_flow,
        ray_address,
        workspace=workspace,
        corpus=corpus,
        memory=memory,
        dataset=name,
        memory_sources=source,
        memory_keyframes=keyframes,
        k=k,
    )
    counts = ", ".join(f"{r['table']} {r['rows']}" for r in out["counts"])
    console.print(
        f"vimi {out['dataset']}: {counts} rows\nsamples: {out['samples_page']}\n"
        f"report: {out['report']}"
    )


@run_app.command("tvp")
@user_errors
def run_tvp(
    corpus: Annotated[str, typer.Option("--corpus", "-c", help="TVP corpus name.")],
    workspace: WsOpt = DEFAULT_WORKSPACE,
    dataset: Annotated[
        str | None, typer.Option(help="ssv2 | bridge | epic100 (with --input: ingest first).")
    ] = None,
    input_path: Annotated[
        str | None, typer.Option("--input", help="The dataset's folder to ingest first.")
    ] = None,
    method: Annotated[
        list[str] | None, typer.Option("--method", help="fca | lora (repeat; default both).")
    ] = None,
    base: Annotated[str, typer.Option(help="CogVideoX folder, or 'tiny'.")] = "tiny",
    preset: Annotated[str, typer.Option(help="Training recipe: fca-paper | fca-tiny.")] = (
        "fca-paper"
    ),
    max_steps: Annotated[int | None, typer.Option(help="Override the recipe's steps.")] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate at most N val rows.")] = None,
    steps: Annotated[int | None, typer.Option(help="DDIM steps (default 50).")] = None,
    features: Annotated[
        str, typer.Option(help="Video features: i3d:<TorchScript path> | random3d.")
    ] = "random3d",
) -> None:
    """FCA text-video prediction end to end: ingest → train → predict → FVD/KVD (the `tvp` flow)."""
    from ragvid.flows.preflight import check_workspace
    from ragvid.flows.tvp_flow import tvp_flow

    check_workspace(workspace)
    out = _run(
        tvp_flow,
        workspace=workspace,
        corpus=corpus,
        dataset=dataset,
        input_path=input_path,
        methods=method,
        base=base,
        preset=preset,
        max_steps=max_steps,
        limit=limit,
        steps=steps,
        video_features=features,
    )
    console.print(f"tvp {corpus}: runs {out['runs']}\nhtml: {out['html']}\nreport: {out['report']}")
