"""A stand-in for the Hugging Face Hub on 127.0.0.1, so that uploads and downloads are tested without the network.

It speaks the part of the Hub's HTTP API that huggingface_hub 2.x uses
- for uploads: `create_repo` (POST /api/repos/create), `upload_folder` / `create_commit` (POST
  /api/{type}s/{repo}/preupload/{rev}, answered with `"uploadMode": "regular"` so that file contents come inline,
  then POST /api/{type}s/{repo}/commit/{rev}: NDJSON lines, a header, then base64 `file` / `deletedFile` /
  `deletedFolder` entries), `ModelCard.validate` (POST /api/validate-yaml, accepts every card), `whoami`;
- for downloads: repo info (GET /api/{type}s/{repo}[/revision/{rev}]), file listings (GET
  /api/{type}s/{repo}/tree/{rev}) and files (HEAD / GET /{repo}/resolve/{rev}/{path}): enough for
  `hf_hub_download`, `snapshot_download` and transformers' / diffusers' `from_pretrained(repo_id)`.
Each repo keeps only its latest files (no history), under `root/{type}s/{namespace}/{name}/`.
"""

import base64
import hashlib
import json
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit


USER = "hf-dalle-tester"
REPO_TYPES = ("model", "dataset", "space")

_API_REPO = re.compile(r"^/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)(?P<rest>/.*)?$")
_RESOLVE = re.compile(r"^/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file, which the Hub reports as a regular file's oid / ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubError(Exception):
    def __init__(self, status: int, message: str, error_code: str | None = None, **details):
        super().__init__(message)
        self.status, self.message, self.error_code, self.details = status, message, error_code, details


class LocalHub:
    """
    The loopback Hub. `endpoint` is its URL (use it as HF_ENDPOINT); `files(repo_id)` returns the stored files;
    `commits` lists every commit received (`repo_id`, `repo_type`, `revision`, `summary`, `added`, `deleted`).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.commits: list[dict] = []
        self._heads: dict[tuple[str, str], str] = {}  # (repo_type, repo_id) -> commit sha
        self._lock = threading.Lock()
        handler = type("LocalHubHandler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="local-hub", daemon=True)

    def __enter__(self) -> "LocalHub":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def repo_dir(self, repo_id: str, repo_type: str = "model") -> Path:
        return self.root / f"{repo_type}s" / repo_id

    def add_files(self, repo_id: str, files: dict[str, Path], repo_type: str = "model") -> None:
        """Put files in a repo (created if needed) without going through HTTP: fixtures for downloads."""
        with self._lock:
            repo_dir = self.repo_dir(repo_id, repo_type)
            for path_in_repo, source in files.items():
                target = self._file_path(repo_dir, path_in_repo)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
            self._heads[(repo_type, repo_id)] = hashlib.sha1(f"{repo_id} {sorted(files)}".encode()).hexdigest()

    def files(self, repo_id: str, repo_type: str = "model") -> dict[str, bytes]:
        """Every file of the repo, by path in the repo."""
        repo_dir = self.repo_dir(repo_id, repo_type)
        return {p.relative_to(repo_dir).as_posix(): p.read_bytes() for p in sorted(repo_dir.rglob("*")) if p.is_file()}

    # ------------------------------------------------------------------ API, called by the handler under the lock

    def _existing_repo(self, repo_type: str, repo_id: str) -> Path:
        if (repo_type, repo_id) not in self._heads:
            raise HubError(404, f"Repository {repo_id} not found.", "RepoNotFound")
        return self.repo_dir(repo_id, repo_type)

    def _check_revision(self, repo_type: str, repo_id: str, revision: str) -> None:
        if unquote(revision) not in ("main", self._heads[(repo_type, repo_id)]):
            raise HubError(
                404, f"Revision {revision} not found (the local hub keeps only `main`).", "RevisionNotFound"
            )

    def _file_path(self, repo_dir: Path, path_in_repo: str) -> Path:
        path = (repo_dir / path_in_repo).resolve()
        if not path.is_relative_to(repo_dir.resolve()) or path == repo_dir.resolve():
            raise HubError(400, f"Invalid path in repo: {path_in_repo!r}.")
        return path

    def create_repo(self, payload: dict) -> dict:
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"Invalid repo type {repo_type!r}.")
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        url = f"{self.endpoint}/{'' if repo_type == 'model' else repo_type + 's/'}{repo_id}"
        if (repo_type, repo_id) in self._heads:
            raise HubError(409, "You already created this repo", url=url)  # create_repo(exist_ok=True) reads the url
        self.repo_dir(repo_id, repo_type).mkdir(parents=True)
        self._heads[(repo_type, repo_id)] = hashlib.sha1(f"init {repo_type} {repo_id}".encode()).hexdigest()
        return {"url": url, "name": repo_id}

    def preupload(self, repo_type: str, repo_id: str, revision: str, payload: dict) -> dict:
        repo_dir = self._existing_repo(repo_type, repo_id)
        self._check_revision(repo_type, repo_id, revision)
        files = []
        for file in payload["files"]:
            path = self._file_path(repo_dir, file["path"])
            oid = git_blob_sha1(path.read_bytes()) if path.is_file() else None
            files.append({"path": file["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": oid})
        return {"files": files}

    def commit(self, repo_type: str, repo_id: str, revision: str, ndjson: bytes) -> dict:
        repo_dir = self._existing_repo(repo_type, repo_id)
        self._check_revision(repo_type, repo_id, revision)
        lines = [json.loads(line) for line in ndjson.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "A commit payload starts with a header line.")
        operations = lines[1:]
        for operation in operations:  # validate everything before touching the files: a commit is atomic
            if operation["key"] not in ("file", "deletedFile", "deletedFolder"):
                raise HubError(
                    400, f"Unsupported commit operation {operation['key']!r} (the local hub asks for regular uploads)."
                )
            self._file_path(repo_dir, operation["value"]["path"])
        added, deleted = [], []
        for operation in operations:
            value = operation["value"]
            path = self._file_path(repo_dir, value["path"])
            if operation["key"] == "file":
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(base64.b64decode(value["content"]))
                added.append(value["path"])
            elif operation["key"] == "deletedFile":
                path.unlink(missing_ok=True)
                deleted.append(value["path"])
            else:
                shutil.rmtree(path, ignore_errors=True)
                deleted.append(value["path"])
        head = hashlib.sha1((self._heads[(repo_type, repo_id)] + json.dumps(lines)).encode()).hexdigest()
        self._heads[(repo_type, repo_id)] = head
        summary = lines[0]["value"]["summary"]
        self.commits.append(
            {
                "repo_id": repo_id,
                "repo_type": repo_type,
                "revision": unquote(revision),
                "summary": summary,
                "added": added,
                "deleted": deleted,
            }
        )
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return {
            "commitUrl": f"{self.endpoint}/{prefix}{repo_id}/commit/{head}",
            "commitOid": head,
            "pullRequestUrl": None,
        }

    def repo_info(self, repo_type: str, repo_id: str, revision: str) -> dict:
        self._existing_repo(repo_type, repo_id)
        self._check_revision(repo_type, repo_id, revision)
        siblings = [{"rfilename": path} for path in self.files(repo_id, repo_type)]
        return {"id": repo_id, "sha": self._heads[(repo_type, repo_id)], "private": False, "siblings": siblings}

    def tree(self, repo_type: str, repo_id: str, revision: str, path_in_repo: str, recursive: bool) -> list[dict]:
        """One page (no `Link` header) of the files and folders under `path_in_repo`, as `list_repo_tree` reads them."""
        repo_dir = self._existing_repo(repo_type, repo_id)
        self._check_revision(repo_type, repo_id, revision)
        top = self._file_path(repo_dir, path_in_repo) if path_in_repo else repo_dir
        if not top.is_dir():
            raise HubError(404, f"Entry {path_in_repo} not found in {repo_id}.", "EntryNotFound")
        entries = []
        for path in sorted(top.rglob("*") if recursive else top.iterdir()):
            name = path.relative_to(repo_dir).as_posix()
            if path.is_dir():
                entries.append({"type": "directory", "path": name, "oid": hashlib.sha1(name.encode()).hexdigest()})
            else:
                data = path.read_bytes()
                entries.append({"type": "file", "path": name, "size": len(data), "oid": git_blob_sha1(data)})
        return entries

    def resolve(self, repo_type: str, repo_id: str, revision: str, path_in_repo: str) -> tuple[bytes, dict]:
        repo_dir = self._existing_repo(repo_type, repo_id)
        self._check_revision(repo_type, repo_id, revision)
        path = self._file_path(repo_dir, unquote(path_in_repo))
        if not path.is_file():
            raise HubError(404, f"Entry {path_in_repo} not found in {repo_id}.", "EntryNotFound")
        data = path.read_bytes()
        return data, {"X-Repo-Commit": self._heads[(repo_type, repo_id)], "ETag": f'"{git_blob_sha1(data)}"'}


class _Handler(BaseHTTPRequestHandler):
    hub: LocalHub
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every answer carries a Content-Length

    def log_message(self, format, *args):  # quiet: pytest shows failures, not access logs
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _require_token(self):
        if not self.headers.get("Authorization", "").startswith("Bearer "):
            raise HubError(401, "Invalid credentials in Authorization header")

    def _dispatch(self, body: bytes):
        path = urlsplit(self.path).path
        with self.hub._lock:
            if self.command == "POST" and path == "/api/repos/create":
                self._require_token()
                return self.hub.create_repo(json.loads(body))
            if self.command == "GET" and path == "/api/whoami-v2":
                self._require_token()
                return {
                    "type": "user",
                    "name": USER,
                    "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"role": "write"}},
                }
            if self.command == "POST" and path == "/api/validate-yaml":  # model cards are checked before upload
                return {"errors": [], "warnings": []}
            if match := _API_REPO.match(path):
                repo_type, repo_id, rest = match["type"][:-1], match["repo"], match["rest"] or ""
                if self.command == "POST" and (upload := re.fullmatch(r"/(preupload|commit)/([^/]+)", rest)):
                    self._require_token()
                    if upload[1] == "preupload":
                        return self.hub.preupload(repo_type, repo_id, upload[2], json.loads(body))
                    return self.hub.commit(repo_type, repo_id, upload[2], body)
                if self.command == "GET" and (info := re.fullmatch(r"(?:/revision/([^/]+))?", rest)):
                    return self.hub.repo_info(repo_type, repo_id, info[1] or "main")
                if self.command == "GET" and (tree := re.fullmatch(r"/tree/([^/]+)(?:/(.+))?", rest)):
                    recursive = parse_qs(urlsplit(self.path).query).get("recursive", [""])[0].lower() in ("true", "1")
                    return self.hub.tree(repo_type, repo_id, tree[1], unquote(tree[2] or ""), recursive)
            if self.command in ("GET", "HEAD") and (match := _RESOLVE.match(path)):
                repo_type = (match["type"] or "models")[:-1]
                return self.hub.resolve(repo_type, match["repo"], match["rev"], match["path"])
        raise HubError(404, f"The local hub does not serve {self.command} {path}.")

    def _handle(self):
        # Read the whole body first: on a kept-alive connection, unread bytes would corrupt the next request.
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            result = self._dispatch(body)
        except HubError as error:
            headers = {"X-Error-Message": error.message}
            if error.error_code:
                headers["X-Error-Code"] = error.error_code
            return self._send(error.status, json.dumps({"error": error.message, **error.details}).encode(), headers)
        if isinstance(result, tuple):  # a file: bytes and headers
            data, headers = result
            return self._send(200, data, headers, content_type="application/octet-stream")
        self._send(200, json.dumps(result).encode())

    do_GET = do_HEAD = do_POST = _handle
