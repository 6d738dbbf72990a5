"""Steps of rules/models.smk: fetch the configured model."""

from __future__ import annotations

from pathlib import Path

from personadrift.command import Command, arg
from personadrift.storage import atomic_write_json


def fetch_model(config: dict, out_dir: str | Path) -> None:
    from personadrift.generation.models import fetch_model as fetch

    if config["model"]["source"] == "api":  # served by an OpenAI-compatible endpoint: no weights
        oc = config["openai"]
        identity = {"name": config["model"]["name"], "source": "api", "base_url": oc["base_url"], "model": oc["model"]}
        atomic_write_json(Path(out_dir) / "manifest.json", identity)
        return
    fetch(config["model"], out_dir)


COMMANDS = [
    Command("fetch-model", "fetch and check the configured model",
            lambda config, a: fetch_model(config, a.out),
            (arg("--out", required=True, help="model folder (manifest.json + weights)"),)),
]
