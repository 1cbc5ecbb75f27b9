"""Editors read recipes as recipec does: Red Hat's yaml-language-server (VS Code's YAML extension) and ajv.

One yaml-language-server process, spoken to over stdio (LSP JSON-RPC: initialize, the settings it pulls
with workspace/configuration, textDocument/didOpen, then textDocument/publishDiagnostics), opens every
shipped recipe and the corpus of tests/recipe/corpus/. The shipped recipes name the schema with their
first line; the corpus is mapped to the copy installed with recipec (``yaml.schemas``, as a user outside
this repository does). The shipped recipes and the corpus's ``ok-*`` files get no diagnostic; each other
file is flagged on the lines its ``# error`` comments mark (a JSON file's lines are in ``JSON_ERRORS``),
and ``recipec validate`` reports exactly the same places (line and column). ajv, in strict mode, compiles
the schema and agrees on which files are valid.

The tools come from ``.ci/node`` (``.ci/run`` installs them there) or, for the server, ``PATH``; without
node or them the tests are skipped, saying how to get them.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "recipe" / "corpus"
CASES = sorted(CORPUS.iterdir())
SHIPPED = sorted((ROOT / "recipes").glob("*.yaml"))
INSTALLED_SCHEMA = ROOT / "recipec" / "schemas" / "recipe.schema.json"
NODE_MODULES = ROOT / ".ci" / "node" / "node_modules"
INSTALL = "npm install --prefix .ci/node yaml-language-server@1.25 ajv@8 (as .ci/run does)"
# JSON has no comments: the lines each broken JSON file is flagged on
JSON_ERRORS = {"unknown-key.json": {3}, "dollar-schema-not-a-string.json": {2}}
_LOCATED = re.compile(r"error: (.+?):(\d+):(\d+): ")


def marked_lines(path: Path) -> set[int]:
    """The lines a corpus file marks as wrong (``# error``), or that JSON_ERRORS lists."""
    if path.suffix == ".json":
        return JSON_ERRORS.get(path.name, set())
    return {i for i, line in enumerate(path.read_text().splitlines(), 1) if re.search(r"#\s*error\b", line)}


def test_the_corpus_marks_what_it_tests():
    bad = [p for p in CASES if not p.name.startswith("ok-")]
    assert len(bad) >= 20 and all(marked_lines(p) for p in bad)
    assert not any(marked_lines(p) for p in CASES if p.name.startswith("ok-"))


# --------------------------------------------------------------------------- the language server


class LanguageServer:
    """The client side of an LSP session over a child's stdin/stdout; what the server sends lands in a queue."""

    def __init__(self, command: list[str], root: Path) -> None:
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL)
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.settings: dict[str, Any] = {}
        self._next_id = 0
        threading.Thread(target=self._read, daemon=True).start()
        self.request("initialize", {"processId": os.getpid(), "rootUri": root.as_uri(), "capabilities": {
            "workspace": {"configuration": True},
            "textDocument": {"publishDiagnostics": {"relatedInformation": False}}}})
        self.notify("initialized", {})

    def _read(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        while True:
            length = None
            while (line := stream.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("ascii").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            if not line or length is None:
                return
            self.messages.put(json.loads(stream.read(length)))

    def _send(self, message: dict[str, Any]) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        assert self.process.stdin is not None
        self.process.stdin.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.process.stdin.flush()

    def notify(self, method: str, params: dict[str, Any]) -> None:
        self._send({"method": method, "params": params})

    def request(self, method: str, params: dict[str, Any], timeout: float = 30) -> Any:
        self._next_id += 1
        self._send({"id": self._next_id, "method": method, "params": params})
        for message in self._drain(timeout):
            if message.get("id") == self._next_id:
                return message.get("result")
        raise TimeoutError(f"no answer to {method} in {timeout} s")

    def _answer(self, request: dict[str, Any]) -> None:
        # the server pulls its settings (workspace/configuration) when told they changed; the rest gets null
        result = None
        if request["method"] == "workspace/configuration":
            result = [self.settings.get(item.get("section")) for item in request["params"]["items"]]
        self._send({"id": request["id"], "result": result})

    def _drain(self, timeout: float) -> Iterator[dict[str, Any]]:
        """Messages as they come, for ``timeout`` seconds; requests from the server are answered on the way."""
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            try:
                message = self.messages.get(timeout=left)
            except queue.Empty:
                return
            if "method" in message and "id" in message:
                self._answer(message)
            else:
                yield message

    def diagnostics(self, documents: dict[str, str], settings: dict[str, Any], timeout: float = 60,
                    quiet: float = 2.0) -> dict[str, list[dict[str, Any]]]:
        """Open ``documents`` (uri -> text) and return the last diagnostics published for each.

        Waits until every document has had diagnostics, then for a quiet spell of ``quiet`` seconds
        (a schema loaded late makes the server publish again).
        """
        self.settings = settings
        self.notify("workspace/didChangeConfiguration", {"settings": settings})
        for uri, text in documents.items():
            self.notify("textDocument/didOpen", {"textDocument": {
                "uri": uri, "languageId": "yaml", "version": 1, "text": text}})
        found: dict[str, list[dict[str, Any]]] = {}
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            message = next(self._drain(quiet if len(found) == len(documents) else left), None)
            if message is None and len(found) == len(documents):
                break
            if message is not None and message.get("method") == "textDocument/publishDiagnostics":
                found[message["params"]["uri"]] = message["params"]["diagnostics"]
        return found

    def close(self) -> None:
        try:
            self.request("shutdown", {}, timeout=5)
            self.notify("exit", {})
            self.process.wait(timeout=5)
        except (TimeoutError, subprocess.TimeoutExpired, BrokenPipeError):
            self.process.kill()
            self.process.wait()


def _server_command() -> list[str] | None:
    node = shutil.which("node")
    local = NODE_MODULES / "yaml-language-server" / "bin" / "yaml-language-server"
    if node and local.exists():
        return [node, str(local), "--stdio"]
    found = shutil.which("yaml-language-server")
    return [found, "--stdio"] if node and found else None


@pytest.fixture(scope="module")
def editor() -> dict[Path, list[dict[str, Any]]]:
    """The diagnostics yaml-language-server publishes for each shipped recipe and corpus file."""
    command = _server_command()
    if command is None:
        pytest.skip(f"yaml-language-server not found (needs node): {INSTALL}, or put it on PATH")
    files = [*SHIPPED, *CASES]
    server = LanguageServer(command, ROOT)
    try:
        settings = {"yaml": {"validate": True, "schemas": {INSTALLED_SCHEMA.as_uri(): [f"{CORPUS}/*"]}}}
        published = server.diagnostics({p.as_uri(): p.read_text() for p in files}, settings)
    finally:
        server.close()
    return {p: published[p.as_uri()] for p in files if p.as_uri() in published}


@pytest.fixture(scope="module")
def recipec() -> dict[Path, list[str]]:
    """The errors ``recipec validate`` reports for each corpus file (one process for all of them)."""
    result = subprocess.run([sys.executable, "-m", "recipec", "validate", "-q", *map(str, CASES)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode in (0, 2), result.stderr
    found: dict[Path, list[str]] = {p: [] for p in CASES}
    for line in result.stderr.splitlines():
        if line.startswith("error: "):
            match = _LOCATED.match(line)
            assert match, f"an unlocated error: {line}"
            found.setdefault(Path(match.group(1)), []).append(line)
    return found


def _editor_places(diagnostics: list[dict[str, Any]]) -> set[tuple[int, int]]:
    return {(d["range"]["start"]["line"] + 1, d["range"]["start"]["character"] + 1) for d in diagnostics}


def _recipec_places(errors: list[str]) -> set[tuple[int, int]]:
    return {(int(m.group(2)), int(m.group(3))) for m in map(_LOCATED.match, errors) if m}


def _show(diagnostics: list[dict[str, Any]]) -> str:
    return "; ".join(f"{d['range']['start']['line'] + 1}: {d['message']}" for d in diagnostics) or "nothing"


def test_every_file_is_answered(editor):
    assert set(editor) == {*SHIPPED, *CASES}


@pytest.mark.parametrize("recipe", SHIPPED, ids=lambda p: p.name)
def test_shipped_recipes_have_no_diagnostics(editor, recipe):
    assert editor[recipe] == [], _show(editor[recipe])


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_editor_and_recipec_flag_the_same_places(editor, recipec, case):
    expected = marked_lines(case)
    assert {line for line, _ in _editor_places(editor[case])} == expected, f"the editor: {_show(editor[case])}"
    assert {line for line, _ in _recipec_places(recipec[case])} == expected, f"recipec: {recipec[case]}"
    assert _editor_places(editor[case]) == _recipec_places(recipec[case]), (_show(editor[case]), recipec[case])


def test_patterns_read_as_sentences(editor):
    [diagnostic] = editor[CORPUS / "device-pattern.yaml"]
    assert diagnostic["message"] == "Must be auto, cpu, cuda, cuda:N (e.g. cuda:1) or mps."
    assert diagnostic["source"] == "yaml-schema: device"  # the key's title is its dotted path


# --------------------------------------------------------------------------- ajv

_AJV = """
const [modules, schemaFile, ...files] = process.argv.slice(2);
const Ajv2020 = require(modules + "/ajv/dist/2020").default;
const YAML = require(modules + "/yaml");
const fs = require("fs");
// strict: every keyword known (the one annotation editors read declared), every type spelled out
const ajv = new Ajv2020({strict: true, allowUnionTypes: true, allErrors: true});
ajv.addKeyword({keyword: "patternErrorMessage", schemaType: "string"});
const validate = ajv.compile(JSON.parse(fs.readFileSync(schemaFile, "utf8")));
const out = {};
for (const file of files) {
  const data = YAML.parse(fs.readFileSync(file, "utf8"), {version: "1.2"});
  out[file] = validate(data) ? [] : validate.errors.map((e) => `${e.instancePath} ${e.message}`);
}
console.log(JSON.stringify(out));
"""


def test_ajv_strict_compiles_the_schema_and_agrees(tmp_path):
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "ajv").is_dir() or not (NODE_MODULES / "yaml").is_dir():
        pytest.skip(f"node, ajv or yaml not found: {INSTALL}")
    script = tmp_path / "ajv-check.js"
    script.write_text(_AJV)
    files = [*SHIPPED, *CASES]
    result = subprocess.run([node, str(script), str(NODE_MODULES), str(INSTALLED_SCHEMA), *map(str, files)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    errors = {Path(k): v for k, v in json.loads(result.stdout).items()}
    for path in files:
        assert bool(errors[path]) == bool(marked_lines(path)), (path.name, errors[path])
