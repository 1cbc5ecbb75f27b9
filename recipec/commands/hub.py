"""Commands that share a run: push (the hub folder to the Hugging Face Hub)."""

from __future__ import annotations

import click

__all__ = ["push"]


@click.command()
@click.argument("run_dir", metavar="RUN", type=click.Path())
@click.argument("repo_id", metavar="REPO_ID")
@click.option("--revision", metavar="BRANCH", help="The branch to commit to (made from main when missing); default main.")
@click.option("--private", is_flag=True, help="Create the repository private (an existing one keeps its visibility).")
@click.option("--commit-message", metavar="TEXT", help="The commit message (default: Upload <run> with recipec).")
def push(run_dir: str, repo_id: str, revision: str | None, private: bool, commit_message: str | None) -> None:
    """Upload RUN/hub/ (export.formats: [hub]) to the Hugging Face Hub as REPO_ID.

    The folder goes as it is, in one commit: config.json, model.safetensors, the card (README.md) and
    the files it shows. The token comes from HF_TOKEN or `hf auth login`; HF_ENDPOINT points at another
    Hub. Needs huggingface_hub (pip install 'recipec[hub]'). Prints the URL of the commit.

    \b
    Examples:
      recipec push runs/quickstart me/quickstart-resnet18
      recipec push runs/quickstart me/quickstart-resnet18 --revision v2 --commit-message "Two more epochs"
    """
    from recipec.pipeline.push import push as push_run

    click.echo(push_run(run_dir, repo_id, revision=revision, private=private, commit_message=commit_message))
