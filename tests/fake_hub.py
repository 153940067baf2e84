"""An in-memory Hugging Face Hub on loopback: just the endpoints `push_to_hub` and card loading call.

Run it with `tests.fakes.Served(FakeHub().app())` and point `HF_ENDPOINT` at its URL (and set
`HF_HUB_DISABLE_XET=1`: data files then go through the LFS batch API, as without `hf_xet`).
Implemented, as huggingface_hub 2.4 calls them:

    POST /api/repos/create                                    create_repo (visibility; 409 if it exists)
    GET  /api/datasets/{repo}[/revision/{rev}]                repo_info / dataset_info
    POST /api/datasets/{repo}/preupload/{rev}                 upload mode per file (lfs for *.parquet)
    POST /datasets/{repo}.git/info/lfs/objects/batch          LFS batch: where to PUT each object
    PUT  /_lfs/{oid}?sig=...                                  the object's bytes, on a "presigned" URL (no token)
    POST /api/validate-yaml                                   README metadata check before a commit (a subset of
                                                              the Hub's rules: SIZE_CATEGORIES, LICENSES, list types)
    POST /api/datasets/{repo}/commit/{rev}                    NDJSON commit: file, lfsFile, deletedFile/Folder
    GET  /api/datasets/{repo}/tree/{rev}[/{path}]             listing (HfFileSystem.glob / ls)
    HEAD/GET /datasets/{repo}/resolve/{rev}/{path}            file download (hf_hub_download, HfFileSystem); ranged,
                                                              and a test may fail a file or cut one transfer short

Every commit keeps a snapshot of the whole repo, so a revision may be a branch name or a commit sha.
Anything else answers 404 and is recorded in `unknown`, so a new call shows up in a failing test.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import yaml
from aiohttp import web

__all__ = ["LICENSES", "SIZE_CATEGORIES", "USER", "FakeHub", "Repo", "metadata_errors"]

USER = "fake-user"
_GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"
# The Hub's size buckets and a sample of its license ids (https://hf.co/docs/hub/repositories-licenses).
SIZE_CATEGORIES = ("n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B",
                   "1B<n<10B", "10B<n<100B", "100B<n<1T", "n>1T")
LICENSES = ("apache-2.0", "mit", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "cc0-1.0", "odc-by", "other", "unknown")
_LIST_KEYS = ("tags", "task_categories", "size_categories", "source_datasets", "language")
_REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
_REV = r"(?P<rev>[^/]+)"


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's object id


@dataclass
class Commit:
    sha: str
    message: str
    files: dict[str, bytes]
    lfs: frozenset[str]  # paths stored as LFS objects


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: list[Commit] = field(default_factory=list)

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def at(self, rev: str) -> Commit | None:
        rev = unquote(rev)
        if rev == "main":
            return self.head
        return next((c for c in self.commits if c.sha == rev), None)


class FakeHub:
    """The Hub's state (repos, LFS store) plus the requests it saw; `fail_with` answers every request."""

    def __init__(self, token: str = "hf_fake_token") -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.objects: dict[str, bytes] = {}  # LFS store, by sha256
        self.requests: list[tuple[str, str]] = []
        self.unknown: list[tuple[str, str]] = []
        self.fail_with: int | None = None
        self.fail_paths: dict[str, int] = {}  # file path in a repo -> HTTP status its downloads answer
        self.cut_once: dict[str, int] = {}  # file path -> bytes sent before the first download is cut off
        self.ranges: list[tuple[str, str]] = []  # (file path, Range header) of every ranged download
        self.validated: list[str] = []  # README contents sent to /api/validate-yaml
        self.base_url = ""  # set from the first request's Host
        self._routes = [
            ("POST", re.compile(r"/api/repos/create"), self._create_repo),
            ("GET", re.compile(rf"/api/datasets/{_REPO}(?:/revision/{_REV})?"), self._repo_info),
            ("POST", re.compile(rf"/api/datasets/{_REPO}/preupload/{_REV}"), self._preupload),
            ("POST", re.compile(rf"/datasets/{_REPO}\.git/info/lfs/objects/batch"), self._lfs_batch),
            ("PUT", re.compile(r"/_lfs/(?P<oid>[0-9a-f]{64})"), self._lfs_put),
            ("POST", re.compile(r"/api/validate-yaml"), self._validate_yaml),
            ("POST", re.compile(rf"/api/datasets/{_REPO}/commit/{_REV}"), self._commit),
            ("GET", re.compile(rf"/api/datasets/{_REPO}/tree/{_REV}(?:/(?P<path>.+))?"), self._tree),
            ("GET", re.compile(rf"/datasets/{_REPO}/resolve/{_REV}/(?P<path>.+)"), self._resolve),
        ]

    # ------------------------------------------------------------ helpers for tests

    def add_repo(self, repo_id: str, files: dict[str, bytes] | None = None, *, private: bool = False) -> Repo:
        """A repo as if created earlier, with `files` committed."""
        repo = Repo(repo_id, private)
        self.repos[repo_id] = repo
        self._new_commit(repo, "initial commit", {".gitattributes": _GITATTRIBUTES, **(files or {})}, frozenset())
        return repo

    def files(self, repo_id: str) -> dict[str, bytes]:
        return dict(self.repos[repo_id].head.files)

    def readme(self, repo_id: str) -> str:
        return self.repos[repo_id].head.files["README.md"].decode()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    # ------------------------------------------------------------ dispatch and auth

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = unquote(request.path)
        self.requests.append((request.method, path))
        self.base_url = self.base_url or f"http://{request.host}"
        if self.fail_with is not None:
            return _error(self.fail_with, "Invalid credentials in Authorization header"
                          if self.fail_with == 401 else "injected failure")
        method = "GET" if request.method == "HEAD" else request.method
        for want, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match and want == method:
                presigned = handler == self._lfs_put  # like S3: the URL carries the permission, not a token
                if not presigned and not self._authorized(request, write=method != "GET"):
                    return _error(401, "Invalid credentials in Authorization header")
                return await handler(request, **match.groupdict())
        self.unknown.append((request.method, path))
        return _error(404, f"fake hub: no route for {request.method} {path}")

    def _authorized(self, request: web.Request, *, write: bool) -> bool:
        header = request.headers.get("Authorization", "")
        if not header:
            return not write
        return header == f"Bearer {self.token}"

    def _repo(self, repo: str) -> Repo | None:
        return self.repos.get(repo)

    def _new_commit(self, repo: Repo, message: str, files: dict[str, bytes], lfs: frozenset[str]) -> Commit:
        seed = f"{repo.repo_id}:{len(repo.commits)}:{message}".encode()
        commit = Commit(hashlib.sha1(seed).hexdigest(), message, files, lfs)  # an id, not security
        repo.commits.append(commit)
        return commit

    # ------------------------------------------------------------ handlers

    async def _create_repo(self, request: web.Request) -> web.Response:
        body = await request.json()
        repo_id = f"{body.get('organization') or USER}/{body['name']}"
        url = f"{self.base_url}/datasets/{repo_id}"
        if body.get("type") != "dataset":
            return _error(400, "fake hub: only dataset repos")
        if repo_id in self.repos:
            return web.json_response({"error": "You already created this dataset repo", "url": url}, status=409)
        private = body.get("visibility", "private" if body.get("private") else "public") != "public"  # 2.x, 0.x
        self.add_repo(repo_id, private=private)
        return web.json_response({"url": url, "name": repo_id})

    async def _repo_info(self, request: web.Request, repo: str, rev: str | None) -> web.Response:
        found = self._repo(repo)
        if found is None:
            return _error(404, "Repository not found", code="RepoNotFound")
        commit = found.at(rev or "main")
        if commit is None:
            return _error(404, "Invalid rev id", code="RevisionNotFound")
        return web.json_response({
            "id": repo, "author": repo.split("/")[0], "sha": commit.sha, "private": found.private,
            "siblings": [{"rfilename": p} for p in sorted(commit.files)], "lastModified": "2025-01-01T00:00:00.000Z",
            "tags": [], "downloads": 0, "likes": 0,
        })

    async def _preupload(self, request: web.Request, repo: str, rev: str) -> web.Response:
        if self._repo(repo) is None:
            return _error(404, "Repository not found", code="RepoNotFound")
        body = await request.json()
        files = [{"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(".parquet") else "regular",
                  "shouldIgnore": False} for f in body["files"]]
        return web.json_response({"files": files, "commitOid": self.repos[repo].head.sha})

    async def _lfs_batch(self, request: web.Request, repo: str) -> web.Response:
        if self._repo(repo) is None:
            return _error(404, "Repository not found", code="RepoNotFound")
        body = json.loads(await request.read())
        objects = []
        for obj in body["objects"]:
            entry: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.objects:
                entry["actions"] = {"upload": {"href": f"{self.base_url}/_lfs/{obj['oid']}?sig={_sign(obj['oid'])}"}}
            objects.append(entry)
        return web.json_response({"transfer": "basic", "objects": objects})

    async def _lfs_put(self, request: web.Request, oid: str) -> web.Response:
        if request.query.get("sig") != _sign(oid):
            return _error(403, "fake hub: bad signature")
        data = await request.read()
        if hashlib.sha256(data).hexdigest() != oid:
            return _error(400, "fake hub: content does not match its oid")
        self.objects[oid] = data
        return web.Response(status=200)

    async def _validate_yaml(self, request: web.Request) -> web.Response:
        body = await request.json()
        errors = metadata_errors(body["content"])
        self.validated.append(body["content"])
        if errors:
            return web.json_response({"errors": [{"message": e} for e in errors]}, status=400)
        return web.json_response({"warnings": []})

    async def _commit(self, request: web.Request, repo: str, rev: str) -> web.Response:
        found = self._repo(repo)
        if found is None:
            return _error(404, "Repository not found", code="RepoNotFound")
        lines = [json.loads(line) for line in (await request.read()).decode().splitlines() if line.strip()]
        header = lines[0]["value"]
        if header.get("parentCommit") not in (None, found.head.sha):
            return _error(412, "A commit has happened since. Please refresh and try again.")
        files, lfs = dict(found.head.files), set(found.head.lfs)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            path = value["path"]
            if key == "file":
                files[path] = base64.b64decode(value["content"])
                lfs.discard(path)
            elif key == "lfsFile":
                if value["oid"] not in self.objects:
                    return _error(400, f"fake hub: LFS object {value['oid']} was never uploaded")
                files[path] = self.objects[value["oid"]]
                lfs.add(path)
            elif key == "deletedFile":
                files.pop(path, None)
            elif key == "deletedFolder":
                for p in [p for p in files if p.startswith(path.rstrip("/") + "/")]:
                    files.pop(p)
            else:
                return _error(400, f"fake hub: unknown commit operation {key}")
        commit = self._new_commit(found, header["summary"], files, frozenset(lfs & set(files)))
        return web.json_response({"commitUrl": f"{self.base_url}/datasets/{repo}/commit/{commit.sha}",
                                  "commitOid": commit.sha, "pullRequestUrl": None})

    async def _tree(self, request: web.Request, repo: str, rev: str, path: str | None) -> web.Response:
        commit = self._commit_at(repo, rev)
        if isinstance(commit, web.Response):
            return commit
        prefix = f"{path.strip('/')}/" if path else ""
        recursive = request.query.get("recursive", "False").lower() == "true"
        entries: dict[str, dict[str, Any]] = {}
        for name in sorted(commit.files):
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix):].split("/")
            for depth in range(1, len(parts)):  # folders on the way
                folder = prefix + "/".join(parts[:depth])
                if recursive or depth == 1:
                    entries.setdefault(folder, {"type": "directory", "path": folder, "oid": _git_oid(folder.encode()),
                                                "size": 0})
            if recursive or len(parts) == 1:
                entries[name] = _file_entry(commit, name)
        if path and not entries:
            return _error(404, "Entry not found", code="EntryNotFound")
        return web.json_response(list(entries.values()))

    async def _resolve(self, request: web.Request, repo: str, rev: str, path: str) -> web.Response:
        commit = self._commit_at(repo, rev)
        if isinstance(commit, web.Response):
            return commit
        if path not in commit.files:
            return _error(404, "Entry not found", code="EntryNotFound")
        if path in self.fail_paths:
            return _error(self.fail_paths[path], "injected failure")
        data = commit.files[path]
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{_git_oid(data)}"', "Content-Length": str(len(data)),
                   "Accept-Ranges": "bytes"}
        if path in commit.lfs:
            headers["X-Linked-Etag"] = f'"{hashlib.sha256(data).hexdigest()}"'
            headers["X-Linked-Size"] = str(len(data))
        if request.method == "HEAD":
            return web.Response(status=200, headers=headers)
        if request.headers.get("Range"):
            self.ranges.append((path, request.headers["Range"]))
        status, body = _ranged(data, request.headers.get("Range"))
        headers["Content-Length"] = str(len(body))
        if path in self.cut_once:  # a connection lost mid-transfer: part of the body, then the socket closes
            resp = web.StreamResponse(status=status, headers=headers)
            await resp.prepare(request)
            await resp.write(body[:self.cut_once.pop(path)])
            assert request.transport is not None
            request.transport.close()
            return resp
        return web.Response(status=status, body=body, headers=headers)

    def _commit_at(self, repo: str, rev: str) -> Commit | web.Response:
        found = self._repo(repo)
        if found is None:
            return _error(404, "Repository not found", code="RepoNotFound")
        commit = found.at(rev)
        if commit is None:
            return _error(404, "Invalid rev id", code="RevisionNotFound")
        return commit


def metadata_errors(content: str) -> list[str]:
    """What the fake's /api/validate-yaml rejects in a README's YAML block."""
    match = re.match(r"^---\n(.*?)\n---", content, re.S)
    if not match:
        return []
    try:
        meta = yaml.safe_load(match[1]) or {}
    except yaml.YAMLError as e:
        return [f"invalid YAML: {e}"]
    if not isinstance(meta, dict):
        return ["metadata must be a mapping"]
    errors = [f'"{k}" must be a list of strings' for k in _LIST_KEYS
              if k in meta and not (isinstance(meta[k], list) and all(isinstance(v, str) for v in meta[k]))]
    licenses = meta.get("license", [])
    for lic in [licenses] if isinstance(licenses, str) else licenses:
        if lic not in LICENSES:
            errors.append(f'"license" must be a license id, got {lic!r}')
    errors += [f'"size_categories" has an unknown bucket {v!r}' for v in meta.get("size_categories") or []
               if v not in SIZE_CATEGORIES]
    for config in meta.get("configs", []):
        if not isinstance(config, dict) or "config_name" not in config or "data_files" not in config:
            errors.append('"configs" entries need config_name and data_files')
    return errors


def _sign(oid: str) -> str:
    return hashlib.sha256(f"fake-hub:{oid}".encode()).hexdigest()[:16]


def _file_entry(commit: Commit, path: str) -> dict[str, Any]:
    data = commit.files[path]
    entry: dict[str, Any] = {"type": "file", "path": path, "size": len(data), "oid": _git_oid(data)}
    if path in commit.lfs:
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return entry


def _ranged(data: bytes, header: str | None) -> tuple[int, bytes]:
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", header or "")
    if not match:
        return 200, data
    start, end = int(match[1]), int(match[2]) if match[2] else len(data) - 1
    return 206, data[start:end + 1]


def _error(status: int, message: str, *, code: str | None = None) -> web.Response:
    headers = {"X-Error-Message": message}
    if code:
        headers["X-Error-Code"] = code
    return web.json_response({"error": message}, status=status, headers=headers)
