"""Write ``client.py`` (``Client``) from ``async_client.py`` (``AsyncClient``), so that a method is written once.

``python -m app.client.generate`` (``make client``) after any change to ``async_client.py``;
``tests/app/client/test_generated.py`` fails while ``client.py`` is not what this makes.

unasync (python-trio's, as httpcore and elasticsearch-py use it) drops ``async`` and ``await`` and renames
tokens; two things it cannot say are done here: ``Awaitable[X]`` becomes ``X``, and the imports and layout are
put right by ruff (``yield from`` where the async side must loop), as in the rest of the tree.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "async_client.py"
TARGET = HERE / "client.py"

# Beyond unasync's own (__aenter__, AsyncIterator...): this package's classes and httpx's async names.
REPLACEMENTS = {
    "AsyncClient": "Client",
    "AsyncDatasets": "Datasets",
    "AsyncJobs": "Jobs",
    "AsyncBackbones": "Backbones",
    "AsyncWebhooks": "Webhooks",
    "AsyncBaseTransport": "BaseTransport",
    "AbstractAsyncContextManager": "AbstractContextManager",
    "aclose": "close",
    "aread": "read",
    "aiter_lines": "iter_lines",
    "aiter_raw": "iter_raw",
    "asyncio": "time",  # from asyncio import sleep -> from time import sleep
}
HEADER = "# Generated from async_client.py by python -m app.client.generate: edit that file, not this one.\n"


def without_awaitable(text: str) -> str:
    """``Awaitable[X]`` -> ``X``, brackets inside ``X`` included."""
    opening = "Awaitable["
    while (start := text.find(opening)) != -1:
        depth, end = 1, start + len(opening)
        while depth:
            depth += {"[": 1, "]": -1}.get(text[end], 0)
            end += 1
        text = text[:start] + text[start + len(opening) : end - 1] + text[end:]
    return text


def ruff(*args: str, text: str) -> str:
    """``text`` through ruff as if it were ``client.py`` (the project's settings apply)."""
    command = [str(Path(sys.executable).parent / "ruff"), *args, "--stdin-filename", str(TARGET), "-"]
    return subprocess.run(command, input=text, capture_output=True, text=True, check=True).stdout


def generated() -> str:
    """What ``client.py`` should hold."""
    # Imported here: a development tool, which the service's own install has no need of (nor holds).
    import unasync  # type: ignore[import-untyped]

    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "_async" / SOURCE.name
        source.parent.mkdir()
        source.write_text(SOURCE.read_text())
        rule = unasync.Rule(fromdir="/_async/", todir="/_sync/", additional_replacements=REPLACEMENTS)
        unasync.unasync_files([str(source)], rules=[rule])
        text = (Path(folder) / "_sync" / SOURCE.name).read_text()
    text = ruff(
        "check",
        "--fix",
        "--exit-zero",
        "--quiet",
        "--unsafe-fixes",
        "--select",
        "F401,I,UP028",
        text=without_awaitable(text),
    )
    return HEADER + ruff("format", "--quiet", text=text)


def main() -> None:
    TARGET.write_text(generated())
    print(f"wrote {TARGET.relative_to(Path.cwd()) if TARGET.is_relative_to(Path.cwd()) else TARGET}")


if __name__ == "__main__":
    main()
