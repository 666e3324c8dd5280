"""`t2i serve`: the web page and the HTTP API (`t2i.serve`) on a local port."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

from ..errors import UserError
from .common import add_precision, positive

TOKEN_VARIABLE = "T2I_TOKEN"  # the token from the environment keeps it out of the process list


def default_data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "t2i" / "serve"


def add_serve(sub) -> None:
    from ..serve.limits import Limits

    limits = Limits()
    p = sub.add_parser("serve", help="a web page and an HTTP API (AUTOMATIC1111-compatible) with a job queue",
                       description="Serve the page at http://HOST:PORT/, our API at /api, AUTOMATIC1111's at "
                                   "/sdapi/v1 and the API's docs at /docs. Jobs and their images are kept in "
                                   "--data-dir and survive restarts.")
    p.add_argument("--model", action="append", default=[], metavar="M",
                   help="a model to offer (a shipped name, a model folder or an SD checkpoint); repeat for more; "
                        "the first is the default (default: the shipped models)")
    p.add_argument("--models-dir", type=Path, default=None, help="also offer every model folder and SD file in DIR")
    p.add_argument("--lora-dir", type=Path, default=None,
                   help="LoRA files that prompts apply as <lora:NAME:SCALE> (AUTOMATIC1111's syntax), NAME the "
                        "file's name")
    p.add_argument("--embeddings-dir", type=Path, default=None,
                   help="textual-inversion embeddings, added to every model they fit; a prompt calls each by its "
                        "file's name")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=positive(int, 65535), default=7860, help="default: 7860")
    p.add_argument("--data-dir", type=Path, default=None,
                   help=f"where jobs and images are kept (default: {default_data_dir()})")
    p.add_argument("--token", default=os.environ.get(TOKEN_VARIABLE),
                   help=f"require 'Authorization: Bearer TOKEN' on the API (default: ${TOKEN_VARIABLE})")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without a token")
    p.add_argument("--cors", action="append", default=[], metavar="ORIGIN",
                   help="let pages from ORIGIN call the API (default: none)")
    p.add_argument("--device", default="auto")
    add_precision(p)
    p.add_argument("--model-memory", type=positive(float), default=None, metavar="GB",
                   help="GB of weights kept loaded; past it the least recently used model is unloaded "
                        "(default: half the free memory of the device the models run on)")
    p.add_argument("--max-pixels", type=positive(int), default=limits.max_pixels, help="per image (default: 1024²)")
    p.add_argument("--max-steps", type=positive(int, 10_000), default=limits.max_steps,
                   help=f"default: {limits.max_steps}")
    p.add_argument("--max-images", type=positive(int, 4096), default=limits.max_images,
                   help=f"per job (default: {limits.max_images})")
    p.add_argument("--max-queue", type=positive(int), default=limits.max_queue,
                   help=f"jobs waiting (default: {limits.max_queue})")
    p.set_defaults(run=run_serve)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise UserError(f"cannot listen on {host}:{port} ({error.strerror or error}): choose another --port "
                            "or --host") from None


def run_serve(args) -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as error:
        raise UserError(f"t2i serve needs the serve extra ({error.name} is missing): pip install \"t2i[serve]\" "
                        "(or, in a checkout, pip install -e \".[serve]\")") from None

    from ..devices import resolve_device
    from ..memory import available_memory
    from ..serve.app import ServerSettings, create_app
    from ..serve.limits import Limits

    if not is_loopback(args.host) and not args.token and not args.insecure:
        raise UserError(f"--host {args.host} lets other machines in: give --token (or ${TOKEN_VARIABLE}), "
                        "or --insecure to serve without one")
    check_port_free(args.host, args.port)
    # half of what the models' device has free, where they live: the GPU's memory, not the host's, with --device cuda
    free = available_memory(resolve_device(args.device))
    memory = args.model_memory * 2**30 if args.model_memory else (free or 0) // 2 or None
    limits = Limits(max_pixels=args.max_pixels, max_steps=args.max_steps, max_images=args.max_images,
                    max_queue=args.max_queue)
    data_dir = args.data_dir or default_data_dir()
    app = create_app(ServerSettings(data_dir, tuple(args.model), args.models_dir, args.token, limits,
                                    tuple(args.cors), args.device, args.dtype, memory, args.lora_dir,
                                    args.embeddings_dir))
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"t2i serve: http://{shown}:{args.port}/ (API docs at /docs; jobs kept in {data_dir})", flush=True)
    # open event streams and waiting AUTOMATIC1111 calls get 5 s at a stop; then the worker stops at its next
    # step and the running job waits for the next start, instead of the stop waiting for the job
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)
