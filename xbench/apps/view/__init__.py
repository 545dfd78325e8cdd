"""``xbench-view <folder>...``: a local web viewer (Streamlit) of job folders the pipeline wrote.

Thin: checks the folders, then starts ``streamlit run`` on :mod:`xbench.apps.view.app`
bound to 127.0.0.1 (``--host`` to change it), with the folders passed in the
environment (``XBENCH_VIEW_FOLDERS``, a JSON list) so the page can never widen
them. The pages read through :mod:`xbench.pipeline.view_data`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

FOLDERS_ENV = "XBENCH_VIEW_FOLDERS"


def streamlit_command(folders, host: str = "127.0.0.1", port: int = 8501, browser: bool = False) -> list[str]:
    """The ``python -m streamlit run ...`` command line for ``folders``."""
    app = Path(__file__).with_name("app.py")
    return [sys.executable, "-m", "streamlit", "run", str(app),
            "--server.address", host, "--server.port", str(port), "--server.headless", "false" if browser else "true",
            "--server.fileWatcherType", "none", "--server.runOnSave", "false", "--browser.gatherUsageStats", "false",
            "--global.developmentMode", "false", "--client.toolbarMode", "viewer", "--theme.base", "light"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="xbench-view", description="Look at xbench results in the browser: tables, heatmap galleries, one image's "
                                "curves and perturbed steps, comparisons. Reads the given folders only; writes nothing.")
    p.add_argument("folders", nargs="+", help="job folders, multirun folders, or parents of them")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8501, help="port (default 8501)")
    p.add_argument("--browser", action="store_true", help="open a browser tab")
    a = p.parse_args(argv)
    from xbench.pipeline.view_data import ViewerError, Workspace

    try:
        ws = Workspace(a.folders)
        if not ws.jobs():
            raise ViewerError(f"no job folder with a metrics.json under {', '.join(a.folders)}")
    except ViewerError as exc:
        print(f"xbench-view: error: {exc}", file=sys.stderr)
        return 2
    try:
        import streamlit  # noqa: F401
    except ImportError:
        print("xbench-view: error: Streamlit is not installed; pip install 'xbench[view]'", file=sys.stderr)
        return 2
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"xbench-view: warning: serving on {a.host}: anyone who reaches this address can read the results", file=sys.stderr)
    env = {**os.environ, FOLDERS_ENV: json.dumps([str(r) for r in ws.roots])}
    cmd = streamlit_command(ws.roots, a.host, a.port, a.browser)
    print(f"xbench-view: {len(ws.jobs())} job(s); open http://{a.host}:{a.port}", flush=True)
    os.execve(sys.executable, cmd, env)  # the server takes this process over (Ctrl-C stops it)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
