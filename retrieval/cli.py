"""`app.py index ...` commands: build (train the towers + FAISS index), info, search."""

from __future__ import annotations

import typer

index_app = typer.Typer(no_args_is_help=True)


def _settings(cutoff: str | None, epochs: int | None, max_users: int | None, dim: int, seed: int, threads: int | None,
              llm_tags: str | None, catalogue: str = "full"):
    from core.options import parse_date
    from retrieval.settings import RetrievalSettings

    given = {"epochs": epochs} if epochs else {}
    return RetrievalSettings(cutoff=parse_date(cutoff, "--cutoff"), **given,
                             max_users=max_users, dim=dim, seed=seed, num_threads=threads, llm_tags_path=llm_tags,
                             catalogue=catalogue)


_DATASET = typer.Option("completejourney", "--dataset", "-d", help="Dataset spec.")
_CUTOFF = typer.Option(None, "--cutoff", help="Train only on behaviours before YYYY-MM-DD.")
_EPOCHS = typer.Option(None, "--epochs", min=1, help="Tower training epochs (default: RetrievalSettings.epochs).")
_MAX_USERS = typer.Option(None, "--max-users", min=1, help="Train on a seeded sample of users.")
_DIM = typer.Option(256, "--dim", min=8)
_SEED = typer.Option(42, "--seed")
_THREADS = typer.Option(None, "--threads", min=1)
_LLM_TAGS = typer.Option(None, "--llm-tags", help="JSONL of {tag, item_id} pairs from logged runs.")


@index_app.command("build")
def build(dataset: str = _DATASET, cutoff: str = _CUTOFF, epochs: int | None = _EPOCHS, max_users: int = _MAX_USERS,
          dim: int = _DIM, seed: int = _SEED, threads: int = _THREADS, llm_tags: str = _LLM_TAGS,
          rebuild: bool = typer.Option(False, "--rebuild", help="Retrain even if a cached build exists.")) -> None:
    """Train the user/item/tag towers and build the FAISS item index (cached under the data dir)."""
    from rich.console import Console

    from behavior.adapters import load_dataset
    from retrieval.service import load_or_build_retriever

    ds = load_dataset(dataset)
    r = load_or_build_retriever(ds, _settings(cutoff, epochs, max_users, dim, seed, threads, llm_tags),
                                progress=True, rebuild=rebuild)
    c = r.config
    t = c["train"]
    Console().print(
        f"[bold]index[/] {r.directory}\n  {c['n_items']} items, {c['n_users']} users, {c['n_train_rows']} training rows, "
        f"{c['n_item_texts']} item texts, {c['n_tags']} tags\n  model {c['model_hash'][:12]}, dim {r.index.dim}; "
        f"training {t['seconds']:.0f} s, {t['samples_per_s']:.0f} samples/s; epoch losses "
        + ", ".join(f"{e['loss']:.3f}" for e in t["epochs"]))


@index_app.command("search")
def search(user: str = typer.Option(..., "--user", "-u"),
           tag: list[str] = typer.Option(..., "--tag", "-t", help="Repeat for several tags."),
           k: int = typer.Option(10, "--k", "-k"), beta: float = typer.Option(None, "--beta"),
           dataset: str = _DATASET, cutoff: str = _CUTOFF, epochs: int | None = _EPOCHS, max_users: int = _MAX_USERS,
           dim: int = _DIM, seed: int = _SEED, threads: int = _THREADS, llm_tags: str = _LLM_TAGS,
           build: bool = typer.Option(False, "--build", help="Train and build the index now if none is cached "
                                                             "for these settings (minutes).")) -> None:
    """Search the cached index for one user and some tags. An index is trained only with ``--build``:
    a ``--cutoff`` (or other setting) that matches no cached build is an error saying so."""
    from rich.console import Console
    from rich.table import Table

    from behavior.adapters import load_dataset
    from core.errors import IntentRecError
    from retrieval.service import artifact_dir, load_or_build_retriever

    ds = load_dataset(dataset)
    settings = _settings(cutoff, epochs, max_users, dim, seed, threads, llm_tags)
    directory = artifact_dir(ds, settings)
    if not build and not (directory / "config.json").exists():
        raise IntentRecError(f"no index is built for these settings (dataset {ds.name}, cutoff {cutoff or 'none'}; "
                             f"expected at {directory}): run `app.py index build` with the same options, "
                             f"or add --build to train it now")
    r = load_or_build_retriever(ds, settings, progress=True)
    res = r.search(user, tag, k, beta=beta)
    t = Table(title=f"user {user} known={res.user_known} flags={res.flags}")
    for col in ("item", "title", "category", "channel", "p", "score", "user", "tag", "tags", "sources"):
        t.add_column(col)
    for c in res.candidates:
        t.add_row(c.item_id, c.title, c.category, c.channel, "–" if c.probability is None else f"{c.probability:.3f}",
                  f"{c.score:.3f}", "–" if c.user_score is None else f"{c.user_score:.3f}",
                  "–" if c.tag_score is None else f"{c.tag_score:.3f}", ", ".join(c.tags), ",".join(c.sources))
    Console().print(t)
