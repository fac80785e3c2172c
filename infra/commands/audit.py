"""`flywheel audit`: verify the append-only log's hash chain, print its signed head, show entries."""

from __future__ import annotations

from typing import Annotated

import typer

from infra.commands.common import clip, state, store
from infra.errors import FlywheelError

app = typer.Typer(help="The append-only audit log.", no_args_is_help=True)


@app.command("verify")
def audit_verify(
    ctx: typer.Context,
    head: Annotated[
        str | None,
        typer.Option(
            help="A head you kept (SEQ:HASH from `flywheel audit head` or the log's 'audit head' line): the log "
            "must still hold it."
        ),
    ] = None,
) -> None:
    """Check the hash chain over every entry and against its signed anchor (DATA_DIR/audit.anchor); exit 1
    when an entry was changed, removed or re-chained."""
    from curation import audit
    from infra import keys

    cfg = state(ctx).config()
    anchor = keys.read_anchor(cfg.data_dir)
    key = keys.data_dir_key(cfg.data_dir, "audit-chain") if anchor else None
    with store(ctx, read_only=True) as con:
        verdict = audit.verify(con, anchor, key)
        if verdict.ok and verdict.entries and anchor is None:
            verdict = audit.Verdict(
                verdict.entries,
                1,
                f"{cfg.data_dir / keys.ANCHOR_FILE} is missing: truncation and rewrites cannot be ruled out",
            )
        if verdict.ok and head is not None:
            seq, _, digest = head.partition(":")
            if not seq.isdigit() or not digest:
                raise FlywheelError(f"--head {head!r}: expected SEQ:HASH")
            verdict = audit.verify(con, audit.Anchor(int(seq), digest, ""))
    if not verdict.ok:
        typer.echo(f"audit log BROKEN at entry {verdict.broken_at}: {verdict.why}", err=True)
        raise typer.Exit(1)
    anchored = f", anchored at entry {anchor.seq}" if anchor else ""
    typer.echo(f"audit log intact: {verdict.entries} entries, hash chain verified{anchored}")


@app.command("head")
def audit_head(ctx: typer.Context) -> None:
    """Print the signed head (SEQ:HASH) to keep outside this machine, for `audit verify --head`."""
    from infra import keys

    anchor = keys.read_anchor(state(ctx).config().data_dir)
    if anchor is None:
        raise FlywheelError("no audit anchor yet: the log is empty, or no command has written to it")
    typer.echo(f"{anchor.seq}:{anchor.hash}")


@app.command("show")
def audit_show(
    ctx: typer.Context, limit: Annotated[int, typer.Option(help="The latest this many entries.")] = 20
) -> None:
    """The latest audit entries."""
    from curation import audit

    with store(ctx, read_only=True) as con:
        for e in audit.entries(con, limit):
            detail = {k: v for k, v in e["details"].items() if k != "sample_ids"}
            typer.echo(
                f"{e['seq']:>6}  {e['logged_at']}  {e['actor']:<20} {e['action']:<9} "
                f"{e['subject'] or '-':<22} {clip(str(detail), 70)}"
            )
