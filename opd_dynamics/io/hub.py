"""Hugging Face Hub revisions as checkpoints: ``hf://org/repo@rev`` is one checkpoint; a list
(``@step-100,step-200``) or a pattern (``@step-*``) of revisions is a run, its steps taken from the revision names.

Many public trajectories keep their intermediate checkpoints as branches of one repo (Pythia's ``step1000``,
OLMo's ``stage1-step1000-tokens4B``); the step is the last number in the name. Revisions are listed with
``HfApi.list_repo_refs`` (branches and tags) against the filesystem's own endpoint and token, and read through
``huggingface_hub``'s ``HfFileSystem`` by byte range like any other storage.
"""
from __future__ import annotations

import fnmatch
import re
from urllib.parse import quote, unquote

from ..errors import OPDError
from .remote_path import RemotePath

_PATTERN = re.compile(r"[*?\[,]")
_REPO_TYPES = {"datasets": "dataset", "spaces": "space"}


def split(key: str) -> tuple[str, str, str | None, str]:
    """``[datasets/]org/repo@rev/sub`` -> (repo_type, "org/repo", rev or None, "sub").

    >>> split("org/repo@step-*/actor"), split("datasets/org/d")
    (('model', 'org/repo', 'step-*', 'actor'), ('dataset', 'org/d', None, ''))
    """
    parts = key.split("/")
    repo_type = "model"
    if parts[0] in _REPO_TYPES and len(parts) > 2:
        repo_type = _REPO_TYPES[parts.pop(0)]
    if len(parts) < 2:
        raise OPDError(f"hf://{key}: expected hf://org/repo[@revision]", hint="e.g. hf://EleutherAI/pythia-70m@step1000")
    name, _, rev = parts[1].partition("@")
    return repo_type, f"{parts[0]}/{name}", (unquote(rev) or None), "/".join(parts[2:])


def step_of(revision: str) -> int | None:
    """The last number in a revision name (``step-1000`` -> 1000, ``stage1-step1000-tokens4B``'s -> 1000)."""
    m = re.search(r"step[-_]?(\d+)", revision) or re.search(r"(\d+)(?!.*\d)", revision)
    return int(m.group(1)) if m else None


def is_revision_set(path: object) -> bool:
    """Whether ``path`` is ``hf://…@a,b`` or ``hf://…@pattern`` (a run), not one revision."""
    if not (isinstance(path, RemotePath) and path.storage.protocol == "hf"):
        return False
    rev = split(path.key)[2]
    return rev is not None and bool(_PATTERN.search(rev))


def revisions(path: RemotePath) -> dict[int, RemotePath]:
    """{step: the revision's directory} for a list or a pattern of revisions."""
    repo_type, repo, rev, sub = split(path.key)
    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    wanted = [r.strip() for r in rev.split(",") if r.strip()]
    if any(_PATTERN.search(r) for r in wanted):
        refs = path.storage._call(lambda: _refs(path.storage.fs, repo, repo_type), f"{prefix}{repo}", what="list refs")
        names = [n for n in refs if any(fnmatch.fnmatchcase(n, w) for w in wanted)]
        if not names:
            raise OPDError(f"{path}: no branch or tag matches {rev!r} ({len(refs)} refs, e.g. {sorted(refs)[:3]})",
                           hint="check the revision pattern")
    else:
        names = wanted
    out: dict[int, RemotePath] = {}
    for n in names:
        step = step_of(n)
        if step is None:
            raise OPDError(f"{path}: revision {n!r} has no step number in its name",
                           hint="name the revisions, e.g. @step-100,step-200, or pass one revision per run")
        if step in out:
            raise OPDError(f"{path}: two revisions for step {step} ({out[step].name} and {n})",
                           hint="narrow the revision pattern")
        key = f"{prefix}{repo}@{quote(n, safe='')}" + (f"/{sub}" if sub else "")
        out[step] = RemotePath(path.storage, key)
    return dict(sorted(out.items()))


def _refs(fs, repo: str, repo_type: str) -> list[str]:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=getattr(fs, "endpoint", None), token=getattr(fs, "token", None))
    refs = api.list_repo_refs(repo, repo_type=repo_type)
    return [r.name for r in [*refs.branches, *refs.tags]]


def run_name(path) -> str:
    """The default ``run`` label: ``hf://org/repo@step-*`` -> ``repo``; any other path -> its name."""
    if isinstance(path, RemotePath) and path.storage.protocol == "hf":
        return split(path.key)[1].rsplit("/", 1)[-1]
    return path.name
