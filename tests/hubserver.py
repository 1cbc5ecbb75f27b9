"""A stand-in for the Hugging Face Hub's API on 127.0.0.1: the endpoints ``huggingface_hub`` calls to create a
repository, a branch and a commit of regular (inline) files. Point ``HF_ENDPOINT`` at :attr:`FakeHub.url`.

It keeps what arrived (:attr:`FakeHub.files`: repo id -> path -> bytes, per branch) and every request
(:attr:`FakeHub.requests`); a request without ``Authorization: Bearer <token>`` gets 401.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_PREUPLOAD = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/?]+)")
_COMMIT = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/?]+)")
_BRANCH = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/branch/(?P<rev>[^/?]+)")


def card_errors(readme: str) -> list[str]:
    """What the stand-in refuses in a card's front matter: YAML that does not parse, a base_model that is
    not a repository id, a library_name or pipeline_tag that is not a string, a model-index without results."""
    import yaml

    if not readme.startswith("---\n"):
        return []
    try:
        meta = yaml.safe_load(readme.split("---\n", 2)[1]) or {}
    except yaml.YAMLError as exc:
        return [f"YAML: {exc}"]
    errors = []
    for base in [meta["base_model"]] if isinstance(meta.get("base_model"), str) else meta.get("base_model") or []:
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", str(base)):
            errors.append(f'"base_model" with value "{base}" is not a valid model ID.')
    errors += [f'"{key}" must be a string' for key in ("library_name", "pipeline_tag")
               if key in meta and not isinstance(meta[key], str)]
    errors += ['"model-index" must list results' for entry in meta.get("model-index") or [] if not entry.get("results")]
    return errors


class FakeHub:
    """The stand-in: ``with FakeHub(token="hf_test") as hub: ...`` serves on ``hub.url`` in a thread."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.files: dict[tuple[str, str], dict[str, bytes]] = {}   # (repo id, branch) -> path -> bytes
        self.repos: dict[str, dict[str, Any]] = {}                  # repo id -> the create payload
        self.commits: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _reply(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.requests.append(("POST", self.path))
                if self.headers.get("Authorization") != f"Bearer {hub.token}":
                    return self._reply(401, {"error": "Invalid credentials in Authorization header"})
                if self.path == "/api/validate-yaml":  # what the Hub checks of a card's front matter, in part
                    errors = card_errors(json.loads(body)["content"])
                    return self._reply(400 if errors else 200, {"errors": [{"message": e} for e in errors],
                                                                "warnings": []})
                if self.path == "/api/repos/create":
                    payload = json.loads(body)
                    repo = f"{payload.get('organization') or 'me'}/{payload['name']}"
                    hub.repos[repo] = payload
                    return self._reply(200, {"url": f"{hub.url}/{repo}", "name": repo, "id": repo})
                if m := _BRANCH.match(self.path):
                    hub.files.setdefault((m["repo"], m["rev"]), dict(hub.files.get((m["repo"], "main"), {})))
                    return self._reply(200, {})
                if m := _PREUPLOAD.match(self.path):
                    files = json.loads(body)["files"]
                    return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                                        "oid": None} for f in files]})
                if m := _COMMIT.match(self.path):
                    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                    stored = hub.files.setdefault((m["repo"], m["rev"]), {})
                    for line in lines:
                        if line["key"] == "file":
                            stored[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                    oid = f"{len(hub.commits) + 1:040x}"
                    hub.commits.append({"repo": m["repo"], "revision": m["rev"], "oid": oid,
                                        "header": next(x["value"] for x in lines if x["key"] == "header")})
                    return self._reply(200, {"commitUrl": f"{hub.url}/{m['repo']}/commit/{oid}", "commitOid": oid,
                                             "pullRequestUrl": None})
                return self._reply(404, {"error": f"not served by the stand-in: POST {self.path}"})

            def do_GET(self) -> None:
                hub.requests.append(("GET", self.path))
                self._reply(404, {"error": f"not served by the stand-in: GET {self.path}"})

        return Handler
