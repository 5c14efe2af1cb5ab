"""The web app: one Gradio page whose tabs come from the packages (Chat, Documents, Fine-tune, Arena),
and an OpenAI-compatible API under /v1 on the same port (chatapp/api.py).

    python app.py [--host 127.0.0.1] [--port 7860]

Binds 127.0.0.1:7860 by default, no share link, no analytics, one generation at a time.
Set CHATAPP_AUTH=user:password to require a login, CHATAPP_API_KEY to open /v1 to bearer-key clients.
The page comes up at once; the model loads in the background and the first answer waits for it if needed.
With CHATAPP_LLM_URL set, answers are generated on that OpenAI-compatible server instead.
"""
from __future__ import annotations

import os

# Before gradio/huggingface imports: no analytics or version checks, no hub lookups for the embedded defaults.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import errno
import logging
import socket
import sys
import threading
import time

log = logging.getLogger("chatapp.app")
SHUTDOWN_GRACE_S = 5  # open connections (a browser tab's event stream) get this long once asked to stop

REMOTE_TRAINING_NOTE = (
    "Answers are generated on the model server at `{url}`; training runs here, in this process, on "
    "`CHATAPP_BASE_MODEL`. To answer with an adapter made here, serve it from that server (vLLM: "
    "`--enable-lora --lora-modules NAME=DATA/adapters/NAME`); it then shows up as a variant."
)


def build_app(settings, registry, store):
    import gradio as gr

    from chatapp.ui import build_chat_tab
    from eval.ui import build_arena_tab, build_eval_tab
    from finetune.ui import build_finetune_tab
    from loaders.ui import build_documents_tab

    with gr.Blocks(title="Chat with your documents") as demo:
        if settings.auth:  # the login is chatapp/access.py's cookie, so signing out is its route too
            gr.HTML('<div style="text-align:right"><a href="/logout" id="sign-out">Sign out</a></div>')
        with gr.Tab("Chat"):
            build_chat_tab(settings, registry, store, demo)
        with gr.Tab("Documents"):
            build_documents_tab(store, settings)
        with gr.Tab("Fine-tune"):
            if settings.llm_url:
                gr.Markdown(REMOTE_TRAINING_NOTE.format(url=settings.llm_url), elem_id="ft-remote-note")
            build_finetune_tab(settings, registry)
        with gr.Tab("Arena") as arena_tab:
            build_arena_tab(settings, registry, tab=arena_tab)
        with gr.Tab("Evaluate") as evaluate_tab:
            build_eval_tab(settings, registry, tab=evaluate_tab)
    # One generation at a time on the one model; other events (listing sources, votes) stay quick.
    demo.queue(default_concurrency_limit=1)
    return demo


def build_server(settings, registry, store, demo, login=None):
    """The FastAPI app: the /v1 API's routes (and the login form), then the Gradio page mounted at /
    (gradio's documented `mount_gradio_app`), so all share one port. Routes added before the mount take
    precedence over it. With a login, every route sits behind chatapp/access.py's gate."""
    import gradio as gr
    from fastapi import FastAPI

    from chatapp.access import guard, logged_in_user, login_router
    from chatapp.api import api_router

    server = FastAPI(title="chatapp", docs_url=None, redoc_url=None, openapi_url=None)
    server.include_router(api_router(settings, registry, store))
    if login:
        server.include_router(login_router(login))
    server = gr.mount_gradio_app(server, demo, path="/", server_name=settings.host, server_port=settings.port,
                                 auth_dependency=logged_in_user if login else None,
                                 max_file_size=f"{settings.max_upload_mb}mb", show_error=True)
    if login:
        guard(server, login, settings.data_dir)
    return server


def load_model_in_background(registry) -> None:
    def load() -> None:
        start = time.perf_counter()
        try:
            registry.load()
            info = registry.info()
            log.info("model ready in %.1f s: %s, %s, %s MB on %s", time.perf_counter() - start,
                     info["base"], info["precision"], info["footprint_mb"], info["device"])
        except Exception as exc:
            log.error("model failed to load: %s", exc)

    log.info("loading the model in the background")
    threading.Thread(target=load, name="model-load", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    from chatapp.access import Login
    from chatapp.settings import Settings

    settings = Settings.from_env()
    parser = argparse.ArgumentParser(description="Chat with your documents, fine-tune the model, compare variants.")
    parser.add_argument("--host", default=settings.host, help=f"address to bind (default {settings.host}; CHATAPP_HOST)")
    parser.add_argument("--port", type=int, default=settings.port, help=f"port (default {settings.port}; CHATAPP_PORT)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # bitsandbytes reports at import that optional CPU kernels from the hub are missing; none is needed here.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        login = Login.parse(settings.auth)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # The port is taken before the ~15 s of start-up, and handed to uvicorn: a second `make run` says at
    # once that the app is already there, instead of failing after it with uvicorn's bind error.
    try:
        listening = socket.create_server((args.host, args.port),
                                         family=socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            print(f"error: port {args.port} on {args.host} is in use: is the app already running "
                  f"(http://{args.host}:{args.port})? Stop it, or pass --port N or set CHATAPP_PORT.", file=sys.stderr)
        else:
            print(f"error: cannot listen on {args.host}:{args.port}: {err.strerror or err}", file=sys.stderr)
        return 1

    import uvicorn

    from chatapp.backends import make_registry

    try:
        from loaders.store import get_store

        store = get_store(settings)
    except Exception as exc:  # a locked store folder, an unreachable Qdrant server
        print(f"error: cannot open the document store: {exc}", file=sys.stderr)
        return 1
    registry = make_registry(settings)
    demo = build_app(settings, registry, store)
    server = build_server(settings, registry, store, demo, login)
    load_model_in_background(registry)
    log.info("data in %s; serving on http://%s:%s (OpenAI-compatible API under /v1: %s)%s",
             settings.data_dir.resolve(), args.host, args.port,
             "bearer key required" if settings.api_key else "off, the page has a login" if login else "no key",
             f"; generating on {settings.llm_url}" if settings.llm_url else "")
    # An open page keeps Gradio's event stream alive, and uvicorn's graceful shutdown would wait for it
    # forever: Ctrl+C or a SIGTERM then never stopped the app while a browser tab was open.
    uvicorn.run(server, fd=listening.fileno(), log_level="warning", timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
    return 0


if __name__ == "__main__":
    sys.exit(main())
